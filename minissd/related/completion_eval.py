"""Masked completion, measured: either prior (a DiffRF voxel model or a minissd triplane
Model) completes the masked region of an object's field; its renders are compared with
the object's own views in the known and the completed pixels, against the naive
baseline that fills the region from the mean training code.

Pixel regions come from f^in's own render: a pixel is "completed" when more than half of
its compositing weight lies inside the 3-D mask (and its opacity is above 0.1), "known"
otherwise (background included). Per object:

    psnr_known_input   f^in's renders vs the views, known pixels (what completion must keep)
    psnr_known         the completions' renders, known pixels (mean over proposals)
    psnr_completed     the completions' renders, completed pixels (mean over proposals)
    baseline_psnr_completed   the region filled from the mean training code instead
    diversity          mean pairwise PSNR between proposals, completed pixels (lower = more diverse)
"""
from __future__ import annotations

from dataclasses import replace
import itertools
import math

import torch

from minissd.nerf.render import render_rays
from minissd.related.completion import (FieldMatch, complete, plane_mask, region_mask,
                                        voxel_mask)
from minissd.related.diffrf import DiffRFModel
from minissd.related.voxel import fit_grids
from minissd.testtime.guidance import views_to_rays
from minissd.testtime.reconstruct import reconstruct


def is_voxel(model) -> bool:
    return isinstance(model, DiffRFModel)


def code_mask(model, box) -> torch.Tensor:
    """The 3-D box carried to the model's code layout (voxel vertices or plane texels)."""
    dev = model.codes.device
    if is_voxel(model):
        return voxel_mask(box, model.cfg.grid_res, dev)               # (1, 1, G, G, G)
    return plane_mask(box, model.cfg.code_res, dev)                   # (1, 3, 1, R, R)


def fit_inputs(model, scenes: list, progress: bool = False) -> torch.Tensor:
    """f^in (B, ...) for scenes not in the training set: DiffRF fits grids from their views
    (as in training: each scene gets fit_iters * fit_batch / N steps), the triplane model
    reconstructs codes (guided sampling + finetuning, testtime/reconstruct.py)."""
    if is_voxel(model):
        cfg = model.cfg
        data = {k: torch.stack([sc[k] for sc in scenes]).to(model.codes.device) for k in ("images", "c2w", "K")}
        steps = math.ceil(cfg.fit_iters * cfg.fit_batch / max(1, len(model.codes)))
        bank = fit_grids(data, replace(cfg, fit_iters=steps, fit_batch=len(scenes)),
                         generator=torch.Generator(model.codes.device).manual_seed(0), progress=progress)
        return bank.activated()
    g = torch.Generator(model.codes.device).manual_seed(0)
    return torch.stack([reconstruct(model, {k: sc[k] for k in ("images", "c2w", "K")}, generator=g)
                        for sc in scenes])


def complete_object(model, f_in, box, n: int = 3, steps: int | None = None, seed: int = 0,
                    resample: int = 1, guide_lr: float = 1.0, start: int | None = None) -> torch.Tensor:
    """n completions (n, ...) of one object's field f_in (1, ...) in the box; start = t0:
    from the mean-code fill noised to level t0 instead of from pure noise."""
    g = torch.Generator(model.codes.device).manual_seed(seed)
    guide = None if is_voxel(model) or guide_lr <= 0 else FieldMatch(model.field, f_in, box, lr=guide_lr,
                                                    n_samples=model.cfg.n_samples, generator=g)
    fill = None if start is None else model.codes.mean(0, keepdim=True)
    return complete(model.prior.denoise, model.prior.schedule, f_in, code_mask(model, box),
                    steps or model.cfg.ddim_steps, n, g, guide, resample, start=start, fill=fill)


def mean_code_fill(model, f_in, box) -> torch.Tensor:
    """The baseline: the masked region from the mean training code, the rest f^in."""
    m = code_mask(model, box)
    return m * model.codes.mean(0, keepdim=True) + (1 - m) * f_in


@torch.no_grad()
def render_with_regions(model, codes, scene, box, chunk: int = 4096):
    """Renders (B, V, H, W, 3) of codes (B, ...) at the scene's views and, from the FIRST
    code's render, the pixels (V, H, W) whose weight lies mostly inside the box."""
    o, d, _ = views_to_rays(scene["images"], scene["c2w"], scene["K"])
    dev = codes.device
    o, d = o.to(dev), d.to(dev)
    rgb, frac = [], []
    for i in range(0, o.shape[1], chunk):
        oo, dd = o[:, i:i + chunk], d[:, i:i + chunk]
        out = render_rays(model.field(codes), oo.expand(len(codes), -1, -1), dd.expand(len(codes), -1, -1),
                          model.cfg.n_samples, near_min=model.cfg.near_min, return_samples=True)
        pts = oo[0, :, None] + dd[0, :, None] * out["t"][0, ..., None]         # (N, S, 3)
        w = out["weights"][0]
        inside = (w * region_mask(box, pts)).sum(-1)
        frac.append(torch.where(out["acc"][0] > 0.1, inside / out["acc"][0].clamp_min(1e-6),
                                torch.zeros_like(inside)))
        rgb.append(out["rgb"].clamp(0, 1))
    V, H, W = scene["images"].shape[:3]
    return torch.cat(rgb, 1).reshape(len(codes), V, H, W, 3).cpu(), (torch.cat(frac) > 0.5).reshape(V, H, W).cpu()


def masked_psnr(pred, gt, pix) -> float:
    """PSNR (dB) over the pixels pix (V, H, W) of pred vs gt (V, H, W, 3)."""
    if not pix.any():
        return float("nan")
    mse = (pred - gt).pow(2)[pix].mean()
    return float(-10 * torch.log10(mse.clamp_min(1e-10)))


def evaluate_completion(model, scene, f_in, box, n: int = 3, steps: int | None = None, seed: int = 0,
                        resample: int = 1, guide_lr: float = 1.0, start: int | None = None) -> dict:
    """The five numbers of one object (module docstring), plus the images for figures."""
    props = complete_object(model, f_in, box, n, steps, seed, resample, guide_lr, start)
    base = mean_code_fill(model, f_in, box)
    r_in, pix = render_with_regions(model, f_in, scene, box)
    r_props, _ = render_with_regions(model, props, scene, box)
    r_base, _ = render_with_regions(model, base, scene, box)
    gt, known = scene["images"], ~pix
    div = [masked_psnr(r_props[a], r_props[b], pix) for a, b in itertools.combinations(range(n), 2)]
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")   # noqa: E731
    return {"psnr_known_input": masked_psnr(r_in[0], gt, known),
            "psnr_known": mean([masked_psnr(r, gt, known) for r in r_props]),
            "psnr_completed_input": masked_psnr(r_in[0], gt, pix),
            "psnr_completed": mean([masked_psnr(r, gt, pix) for r in r_props]),
            "baseline_psnr_completed": masked_psnr(r_base[0], gt, pix),
            "diversity": mean(div), "completed_pixels": float(pix.float().mean()),
            "images": {"input": r_in[0], "truth": gt, "proposals": r_props, "baseline": r_base[0],
                       "region": pix}}
