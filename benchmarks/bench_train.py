"""Seconds per outer iteration of single-stage training, split into diffusion and rendering.

    python benchmarks/bench_train.py --preset laptop --iters 30 [--device cuda]

Runs `iters` outer iterations of Algorithm 1 on the built-in procedural cars, after a
warm-up of `warmup` iterations, at each K_in given, and prints the mean time of the
diffusion part (lines 4-5: one UNet forward+backward and a denoiser step) and of the
rendering part (lines 6-13: K_in rendering steps), and what recomputing the diffusion
gradient every inner step would cost instead (K_in UNet passes).
"""
from __future__ import annotations

import argparse
import time

import torch

from minissd.config import get_preset, pick_device
from minissd.data.procedural import ensure_dataset
from minissd.ssd.model import load_training_data
from minissd.ssd.train import Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="laptop")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--k-in", type=int, nargs="+", default=[2, 4])
    p.add_argument("--device")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    base = get_preset(args.preset)
    data_dir = ensure_dataset("cars", "train", base.data_scenes, base.data_views, base.image_res,
                              progress=False)
    print(f"preset {base.name} on {device} ({torch.get_num_threads()} threads): "
          f"{base.scenes_per_batch} scenes x {base.rays_per_scene} rays x {base.n_samples} samples, "
          f"UNet on ({3 * base.code_ch}, {base.code_res}, {base.code_res})")
    for k in args.k_in:
        cfg = get_preset(args.preset, k_in_schedule=((0, k),), occ_warmup=0)
        tr = Trainer(cfg, load_training_data(data_dir, cfg, device), device=device)
        for _ in range(args.warmup):
            tr.outer_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rows = [tr.outer_step() for _ in range(args.iters)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        total = (time.perf_counter() - t0) / args.iters
        t_diff = sum(r["t_diff"] for r in rows) / len(rows)
        t_rend = sum(r["t_rend"] for r in rows) / len(rows)
        print(f"K_in={k}: {total:.3f} s/outer iteration = diffusion {t_diff:.3f} s "
              f"({100 * t_diff / total:.0f}%) + rendering {t_rend:.3f} s ({100 * t_rend / total:.0f}%)"
              f"; without the cache the UNet part would be {k * t_diff:.3f} s "
              f"(total {total + (k - 1) * t_diff:.3f} s)")


if __name__ == "__main__":
    main()
