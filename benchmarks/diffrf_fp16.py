"""Is half precision lossless enough for the shipped DiffRF model file? Compares the
training checkpoint (float32) with the model file (float16 grids and UNet): PSNR between
renders of the same grids, and the denoiser's x0 estimates on the same noisy input.

    OMP_NUM_THREADS=1 python benchmarks/diffrf_fp16.py RUN/checkpoint.pt RUN/model.pt
"""
import sys

import torch

from minissd.data.cameras import orbit_poses
from minissd.nerf.autodecoder import psnr_from_mse
from minissd.nerf.triplane import code_activation
from minissd.related.diffrf import DiffRFConfig, DiffRFModel, VoxelPrior
from minissd.ssd import checkpoint as ckpt
from minissd.testtime.generate import render_views

sd = ckpt.load(sys.argv[1])
half = DiffRFModel.load(sys.argv[2])
cfg = DiffRFConfig.from_dict(sd["config"])
full = VoxelPrior(cfg)
full.load_state_dict(sd["ema"])
full.eval().requires_grad_(False)
grids = code_activation(sd["bank"]["codes_"])[:8]
cams = orbit_poses(4)
ps = []
for i in range(len(grids)):
    a = render_views(half, grids[i], cams)
    b = render_views(half, half.codes[i], cams)
    ps.append(float(psnr_from_mse((a - b).pow(2).mean())))
g = torch.Generator().manual_seed(0)
x = torch.randn(8, 4, cfg.grid_res, cfg.grid_res, cfg.grid_res, generator=g)
t = torch.tensor([10, 100, 300, 500, 700, 900, 950, 999])
d = (full.denoise(x, t) - half.prior.denoise(x, t)).abs()
print(f"grids fp32 vs fp16: render PSNR between them {min(ps):.1f} dB (worst of {len(ps)} objects, 4 views)")
print(f"UNet fp32 vs fp16 weights: |x0_hat difference| max {float(d.max()):.2e}, mean {float(d.mean()):.2e} (x0 range +-2)")
