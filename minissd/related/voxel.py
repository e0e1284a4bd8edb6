"""DiffRF's radiance field: an explicit voxel grid of density + RGB, sampled trilinearly
(DiffRF, Mueller et al. CVPR 2023, Sec. 3.1 "radiance field fitting"; the seed's
"Radiance Field Fitting" slide).

A scene is a grid x of shape (4, G, G, G), indexed [channel, ix, iy, iz], whose vertex
(i, j, k) sits at p = -1 + 2 (i, j, k) / (G - 1) in the box [-1, 1]^3. Like a triplane code
it lives in the range of 2 tanh (so the diffusion clip +-2 and triplane.code_activation
are shared); the field reads it as

    f(p) = trilinear(x, p)                      (4,) at a point p in [-1, 1]^3
    sigma(p) = exp(DENSITY_SCALE * f_0(p) + DENSITY_SHIFT)     in [e^-10, e^6]
    rgb(p)   = clamp(0.5 + f_{1:4}(p) / 4, 0, 1)               linear in the grid value

so the grid values are what diffusion sees, and no network sits between grid and colour
(no view dependence, as DiffRF's fitted fields). `VoxelField` is a field callable for
minissd's renderer (nerf/render.py), the drop-in replacement of triplane.TriplaneField.

Fitting (`fit_grids`): every scene's grid is fitted from its posed views by the rendering
loss of eq. (1) (autodecoder.sample_rays, render.render_rays), plus a total-variation term
and a small pull of the density towards "empty" so the unseen inside and outside of the
objects is the same value in every scene (DiffRF also regularises its fits so the grids
form a distribution a denoiser can learn). The per-scene Adam states are the triplane
codes' (triplane.CodeBank), holding (N, 4, G, G, G) instead of (N, 3, C, R, R).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minissd.nerf.autodecoder import psnr_from_mse, sample_rays
from minissd.nerf.render import render_rays
from minissd.nerf.triplane import CodeBank, code_activation, code_inverse_activation
from minissd.runtime import tick
from minissd.utils import randperm

DENSITY_SCALE, DENSITY_SHIFT = 4.0, -2.0     # sigma = exp(4 f_0 - 2): e^-10 .. e^6
EMPTY = -2.0                                  # the grid value of empty space (density channel)
CHANNELS = 4                                  # density, r, g, b


def sample_grid(grid: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of grids (B, C, G, G, G) [c, ix, iy, iz] at points xyz
    (B, M, 3) in [-1, 1]^3 (vertices at -1 + 2 i / (G - 1); outside: the border value)
    -> (B, M, C)."""
    B, M = xyz.shape[:2]
    # grid_sample reads a 5-D grid as (D, H, W) = (ix, iy, iz) with coordinates (W, H, D)
    g = xyz.flip(-1).reshape(B, M, 1, 1, 3).to(grid.dtype)
    out = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(B, grid.shape[1], M).transpose(1, 2)                 # (B, M, C)


def density(f0: torch.Tensor) -> torch.Tensor:
    """sigma = exp(DENSITY_SCALE f_0 + DENSITY_SHIFT), f_0 clamped to the grid range +-2."""
    return torch.exp(DENSITY_SCALE * f0.clamp(-2, 2) + DENSITY_SHIFT)


def colour(f_rgb: torch.Tensor) -> torch.Tensor:
    """rgb = clamp(0.5 + f / 4, 0, 1)."""
    return (0.5 + f_rgb / 4).clamp(0, 1)


class VoxelField:
    """The radiance fields of B voxel grids x (B, 4, G, G, G): the renderer's field callable
    (`field(xyz (B, M, 3), dirs) -> sigma (B, M), rgb (B, M, 3)`, `field.density(xyz)`,
    `field.batch_size`), like triplane.TriplaneField."""

    def __init__(self, x: torch.Tensor):
        if x.dim() != 5 or x.shape[1] != CHANNELS:
            raise ValueError(f"voxel.py: expected grids (B, {CHANNELS}, G, G, G), got {tuple(x.shape)}")
        self.x = x

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def __call__(self, xyz: torch.Tensor, dirs: torch.Tensor | None = None):
        f = sample_grid(self.x, xyz)                                          # (B, M, 4)
        return density(f[..., 0]), colour(f[..., 1:])

    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        return density(sample_grid(self.x[:, :1], xyz)[..., 0])


def grid_points(G: int, device="cpu") -> torch.Tensor:
    """The vertex positions (G, G, G, 3) of a grid, [ix, iy, iz] -> (x, y, z)."""
    c = torch.linspace(-1.0, 1.0, G, device=device)
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1)


def empty_grids(n: int, G: int, device="cpu") -> torch.Tensor:
    """n grids of empty space with grey colour: (n, 4, G, G, G), density channel EMPTY/2
    (a little above empty, so the first gradients are not vanishingly small)."""
    x = torch.zeros(n, CHANNELS, G, G, G, device=device)
    x[:, 0] = EMPTY / 2
    return x


def voxel_bank(x: torch.Tensor) -> CodeBank:
    """A CodeBank (per-scene Adam) holding activated grids x (N, 4, G, G, G)."""
    bank = CodeBank(len(x), 1, 1, device=x.device, generator=torch.Generator())
    bank.codes_ = code_inverse_activation(x.detach()).clone()
    bank.exp_avg, bank.exp_avg_sq = torch.zeros_like(bank.codes_), torch.zeros_like(bank.codes_)
    return bank


def tv3d(x: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of grids (B, C, G, G, G) over the 3 axes -> (B,)."""
    d = [x.diff(dim=k).pow(2).flatten(1).mean(1) for k in (2, 3, 4)]
    return sum(d) / 3


def fit_loss(x: torch.Tensor, rays, n_samples: int, tv: float, empty: float, generator=None,
             stats: dict | None = None) -> torch.Tensor:
    """Per-scene fitting loss (B,) of grids x (B, 4, G, G, G) on a RayBatch:
    0.5 ||C(r) - y||^2 (sum over RGB, mean over rays) + tv * TV(x) + empty * mean(f_0 + 2)."""
    out = render_rays(VoxelField(x), rays.origins, rays.dirs, n_samples, stratified=True,
                      generator=generator)
    sq = (out["rgb"] - rays.target).pow(2)                                   # (B, N, 3)
    if stats is not None:
        stats["mse"] = sq.detach().mean(dim=(1, 2))
    return 0.5 * sq.sum(-1).mean(-1) + tv * tv3d(x) + empty * (x[:, 0] - EMPTY).flatten(1).mean(1)


def fit_step(bank: CodeBank, idx: torch.Tensor, data: dict, cfg, lr: float, generator=None) -> torch.Tensor:
    """One Adam step of the grids of scenes idx (B,) on fresh rays of their views; returns
    the per-scene MSE (B,)."""
    rays = sample_rays(data, idx, cfg.fit_rays, generator)
    code_ = bank.get(idx)                                                    # (B, 4, G, G, G)
    stats = {}
    loss = fit_loss(code_activation(code_), rays, cfg.n_samples, cfg.fit_tv, cfg.fit_empty,
                    generator, stats)
    loss.sum().backward()
    bank.adam_step(idx, code_.grad, lr)
    return stats["mse"]


def fit_lr(cfg, step: int, total: int) -> float:
    """Cosine decay from cfg.fit_lr to cfg.fit_lr / 10 over the fitting passes."""
    return cfg.fit_lr * (0.55 + 0.45 * math.cos(math.pi * min(step, total) / max(1, total)))


def fit_grids(data: dict, cfg, bank: CodeBank | None = None, start: int = 0, stop: int | None = None,
              generator=None, progress: bool = True, callback=None) -> CodeBank:
    """Fit one voxel grid per scene of `data` (autodecoder layout: images (N, V, H, W, 3),
    c2w, K): cfg.fit_iters steps over batches of cfg.fit_batch scenes. Resumable: steps
    start..stop of the same schedule; callback(step, bank, mse) after each step."""
    N = data["images"].shape[0]
    bank = bank or voxel_bank(empty_grids(N, cfg.grid_res, data["images"].device))
    total = cfg.fit_iters
    stop = total if stop is None else min(stop, total)
    for step in tqdm(range(start, stop), desc="fit voxels", disable=not progress, leave=False):
        idx = randperm(N, generator, data["images"].device)[:cfg.fit_batch]
        mse = fit_step(bank, idx, data, cfg, fit_lr(cfg, step, total), generator)
        tick()                                  # threads follow the free CPU (runtime.py)
        if callback is not None:
            callback(step, bank, mse)
    return bank


def fit_psnr(mse: torch.Tensor) -> float:
    """Mean training-ray PSNR (dB) of per-scene MSEs."""
    return float(psnr_from_mse(mse).mean())
