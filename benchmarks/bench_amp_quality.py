"""Training quality of mixed precision: the same seed trained with amp=off and amp=bf16.

    python benchmarks/bench_amp_quality.py --preset smoke --iters 200

Trains a single-stage model per amp mode on the built-in procedural cars and prints the
training-code PSNR (EMA decoder, the first `views` views of every training car), the last
rendering and diffusion losses, and the wall and CPU seconds of training.
"""
from __future__ import annotations

import argparse
import time

import torch

from minissd.config import get_preset
from minissd.data.procedural import ensure_dataset
from minissd.nerf.autodecoder import heldout_psnr
from minissd.ssd.model import load_training_data
from minissd.ssd.train import Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--amp", nargs="+", default=["off", "bf16"])
    args = p.parse_args(argv)
    for amp in args.amp:
        cfg = get_preset(args.preset, iters=args.iters, amp=amp)
        root = ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views, cfg.image_res,
                              progress=False)
        data = load_training_data(root, cfg)
        tr = Trainer(cfg, data)
        t0, c0 = time.perf_counter(), time.process_time()
        tr.train(progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        sub = {k: (v[:, :args.views] if torch.is_tensor(v) else v) for k, v in data.items()}
        psnr = heldout_psnr(tr.ema_decoder, tr.bank.activated(), sub, cfg, tr.occupancy)
        print(f"amp={amp}: {args.iters} iterations, training-code PSNR {psnr.mean():.2f} dB "
              f"(per car {[round(x, 1) for x in psnr.tolist()]}), last loss_rend "
              f"{tr.log[-1]['loss_rend']:.4f}, loss_diff {tr.log[-1]['loss_diff']:.4f}; "
              f"{wall:.0f} s wall, {cpu:.0f} CPU-s ({torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main()
