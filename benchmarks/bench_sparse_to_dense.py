"""Sparse-to-dense reconstruction: PSNR/SSIM against the number of input views.

    python benchmarks/bench_sparse_to_dense.py --ckpt MODEL.pt --data TEST_DIR --scenes 2 \
        --counts 1 2 4 8 16 --max-eval 10 [--plot s2d.png]

For each test scene, reconstructs from 1, 2, 4, ... input views spread over the spiral
(guided sampling + rend+diff finetuning with the per-view-count schedule of config.TestConfig.ft_schedule)
and scores the SAME held-out views for every count. Prints the mean over scenes.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from minissd.data.srn import SRNDataset
from minissd.ssd.model import Model
from minissd.testtime.reconstruct import plot_sparse_to_dense, sparse_to_dense


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--max-eval", type=int, default=10)
    p.add_argument("--plot", help="write the plot to this PNG")
    args = p.parse_args(argv)
    model = Model.load(args.ckpt)
    ds = SRNDataset(args.data, resolution=model.cfg.image_res)
    per_scene = []
    for i in range(min(args.scenes, len(ds))):
        gen = torch.Generator().manual_seed(i)
        per_scene.append(sparse_to_dense(model, ds[i], tuple(args.counts), max_eval=args.max_eval,
                                         generator=gen))
    mean = {c: {k: float(np.mean([r[c][k] for r in per_scene])) for k in ("psnr", "ssim")}
            for c in per_scene[0]}
    print(f"{args.ckpt}: {len(per_scene)} scenes, {args.max_eval} held-out views each")
    print("| input views | PSNR | SSIM |\n|---|---|---|")
    for c, r in mean.items():
        print(f"| {c} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
    if args.plot:
        ax = plot_sparse_to_dense(mean)
        ax.figure.tight_layout()
        ax.figure.savefig(args.plot, dpi=100)
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
