"""Benchmark of the v-diffusion prior (issue 4).

1. 2D toy: train `DiffusionPrior(net=MLPDenoiser)` on a ring of 6 Gaussians, sample with
   DDIM (eta=0), report MMD^2 of samples vs held-out data, of initial noise vs data, and
   the data-vs-data floor (two independent data samples of the same size).
2. Denoiser forward+backward (prior.loss(x0).mean().backward()) wall time per batch of
   cfg.scenes_per_batch codes for each preset, on this machine's CPU (or --device).

    OMP_NUM_THREADS=1 python benchmarks/bench_diffusion.py [--presets smoke laptop gpu]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from minissd.config import get_preset
from minissd.prior.diffusion import DiffusionPrior
from minissd.prior.sampling import ddim_sample
from minissd.prior.toy2d import MLPDenoiser, mixture_of_gaussians, mmd, toy_config, train_toy
from minissd.prior.unet import count_params


def bench_toy(n: int, iters: int, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train = mixture_of_gaussians(8000, generator=g)
    held, held2 = mixture_of_gaussians(n, generator=g), mixture_of_gaussians(n, generator=g)
    prior = DiffusionPrior(toy_config(), net=MLPDenoiser())
    t0 = time.perf_counter()
    losses = train_toy(prior, train, iters=iters, generator=g)
    t_train = time.perf_counter() - t0
    noise = torch.randn(n, 2, generator=g)
    t0 = time.perf_counter()
    x = ddim_sample(prior.denoise, noise, prior.schedule, steps=steps)
    t_sample = time.perf_counter() - t0
    print(f"[toy2d] {iters} Adam iters (batch 512) in {t_train:.1f}s, "
          f"loss {sum(losses[:50]) / 50:.4f} -> {sum(losses[-50:]) / 50:.4f}; "
          f"DDIM {steps} steps x {n} samples in {t_sample:.2f}s")
    print(f"[toy2d] MMD^2 samples vs held-out data : {mmd(x, held):.4f}")
    print(f"[toy2d] MMD^2 initial noise vs data    : {mmd(noise, held):.4f}")
    print(f"[toy2d] MMD^2 data vs data (floor)     : {mmd(held2, held):.4f}")


def bench_denoiser(name: str, device: torch.device, reps: int) -> None:
    cfg = get_preset(name)
    torch.manual_seed(0)
    prior = DiffusionPrior(cfg).to(device)
    B, C, R = cfg.scenes_per_batch, 3 * cfg.code_ch, cfg.code_res
    x0 = (0.5 * torch.randn(B, C, R, R, device=device)).requires_grad_(True)

    def step():
        prior.zero_grad(set_to_none=True)
        x0.grad = None
        prior.loss(x0).mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()                                                    # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"[denoiser] {name:6s} params {count_params(cfg) / 1e6:7.2f}M  input "
          f"({B}, {C}, {R}, {R})  fwd+bwd {times[len(times) // 2] * 1e3:9.1f} ms/batch "
          f"(median of {reps}, {device.type}, {torch.get_num_threads()} thread(s))")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=["smoke", "laptop", "gpu"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--toy-iters", type=int, default=1500)
    ap.add_argument("--toy-samples", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print("command:", "python " + " ".join(sys.argv))
    bench_toy(args.toy_samples, args.toy_iters, args.steps, args.seed)
    device = torch.device(args.device)
    for name in args.presets:
        bench_denoiser(name, device, reps=1 if name in ("gpu", "paper") and
                       device.type == "cpu" else 5)
    if "paper" not in args.presets:
        print("[denoiser] paper   (122M params) skipped by default on CPU; "
              "add --presets paper to time it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
