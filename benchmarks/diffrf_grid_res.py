"""Choose DiffRF's voxel resolution G by measurement: fit the first scenes of the laptop
training set at several G (held-out views excluded from fitting) and print held-out PSNR,
the seconds per fitting step and per 3D-UNet training step, and the model-file size.

    OMP_NUM_THREADS=1 python benchmarks/diffrf_grid_res.py --scenes 8 --steps 150
"""
import argparse
from dataclasses import replace
import time

import torch

from minissd.data.procedural import ensure_dataset
from minissd.nerf.render import render_image
from minissd.nerf.autodecoder import psnr_from_mse
from minissd.related.diffrf import VoxelPrior, diffrf_preset
from minissd.related.voxel import VoxelField, fit_grids
from minissd.data.srn import SRNDataset

p = argparse.ArgumentParser()
p.add_argument("--scenes", type=int, default=8)
p.add_argument("--steps", type=int, default=150)
p.add_argument("--res", type=int, nargs="+", default=[16, 24, 32])
a = p.parse_args()
base = diffrf_preset("laptop")
data_dir = ensure_dataset("cars", "train", base.data_scenes, base.data_views, base.image_res, seed=0)
full = SRNDataset(data_dir, resolution=base.image_res).stack()
held = list(range(0, base.data_views, 10))                       # 5 held-out views
keep = [v for v in range(base.data_views) if v not in held]
fit = {k: full[k][:a.scenes, keep] for k in ("images", "c2w", "K")}
test = {k: full[k][:a.scenes, held] for k in ("images", "c2w", "K")}
print(f"{a.scenes} scenes, {a.steps} fitting steps of {a.scenes} scenes, load {open('/proc/loadavg').read().split()[:3]}")
for G in a.res:
    cfg = replace(base, grid_res=G, fit_iters=a.steps, fit_batch=a.scenes)
    t0 = time.time()
    bank = fit_grids(fit, cfg, generator=torch.Generator().manual_seed(0), progress=False)
    t_fit = (time.time() - t0) / a.steps
    x = bank.activated()
    with torch.no_grad():
        pred = render_image(VoxelField(x), test["c2w"], test["K"], base.image_res, base.image_res,
                            cfg.n_samples)["rgb"].clamp(0, 1)
        mse = (pred - test["images"]).pow(2).mean(dim=(2, 3, 4))
        psnr32 = float(psnr_from_mse(mse).mean())
        pred16 = render_image(VoxelField(x.half().float()), test["c2w"], test["K"], base.image_res,
                              base.image_res, cfg.n_samples)["rgb"].clamp(0, 1)
        d16 = float(psnr_from_mse((pred16 - test["images"]).pow(2).mean(dim=(2, 3, 4))).mean()) - psnr32
    prior = VoxelPrior(replace(cfg, grid_res=G))
    xb = x[:min(8, len(x))]
    t0 = time.time()
    for _ in range(2):
        prior(xb, torch.randint(0, 1000, (len(xb),))).pow(2).mean().backward()
    t_unet = (time.time() - t0) / 2
    mb = (64 * 4 * G ** 3 + sum(q.numel() for q in prior.parameters())) * 2 / 2**20
    print(f"G={G:2d}  held-out PSNR {psnr32:.2f} dB (fp16 grids: {d16:+.3f} dB)  "
          f"fit {t_fit:.3f} s/step  UNet fwd+bwd (batch {len(xb)}) {t_unet:.2f} s  "
          f"model file ~{mb:.1f} MB (64 scenes, fp16)")
