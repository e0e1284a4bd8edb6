"""Training, notebooks 04-05: Algorithm 1 and the two-stage baseline (`train`), atomic and
resumable checkpoints (`checkpoint`), the trained `Model` with `load_or_train` (`model`),
and the training log (`logs`)."""
