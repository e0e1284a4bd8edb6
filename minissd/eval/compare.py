"""One stage vs two stages: the comparison SSDNeRF is about.

Two-stage training fits the codes {x_i} with the rendering loss alone,
    min_x  L_rend(x, psi)                       (stage 1, then phi fits the frozen codes)
so nothing constrains a code where no view looks: noise there costs nothing, and the
diffusion model of stage 2 has to learn that noise too. Single-stage training minimises
    lambda_rend L_rend(x, psi) + lambda_diff L_diff(x, phi)                       (4)
so the prior pulls every code towards what the other codes look like, and the codes come
out smoother and more alike: easier data for the prior, and better samples.

This module measures that: statistics of the codes (how rough, how saturated), samples
from each prior rendered side by side, and a small experiment runner that the notebook's
widgets drive (mode, views per scene, K_in).
"""
from __future__ import annotations

import copy
from dataclasses import replace
import time

import torch

from minissd.config import Config
from minissd.data.cameras import CAMERA_RADIUS, intrinsics, look_at, sphere_to_xyz
from minissd.ssd.model import load_or_train
from minissd.testtime.generate import render_views, sample_codes
from minissd.utils import count_calls, randn


def code_statistics(codes: torch.Tensor) -> dict:
    """Summary numbers of codes (N, 3, C, R, R) (activated, range +-2).

    rms:            root mean square value
    roughness:      mean |x[r+1] - x[r]| over both plane axes, divided by the rms
                    (a total-variation ratio: high for noisy planes)
    saturated:      fraction of values with |x| > 1.9 (tanh pushed to its rails)
    spread:         mean distance of a code to the mean code, divided by the rms
                    (how different the scenes' codes are from each other)
    """
    x = codes.float()
    rms = x.pow(2).mean().sqrt().clamp_min(1e-12)
    tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()) / 2
    spread = (x - x.mean(0, keepdim=True)).flatten(1).pow(2).mean(1).sqrt().mean()
    return {"rms": float(rms), "roughness": float(tv / rms),
            "saturated": float((x.abs() > 1.9).float().mean()), "spread": float(spread / rms)}


def front_camera(elevation_deg: float = 25.0, azimuth_deg: float = 35.0) -> torch.Tensor:
    """One (1, 4, 4) camera at the training radius, a three-quarter view."""
    az, el = torch.tensor(azimuth_deg).deg2rad(), torch.tensor(elevation_deg).deg2rad()
    return look_at(sphere_to_xyz(CAMERA_RADIUS, az, el))[None]


@torch.no_grad()
def render_codes(model, codes: torch.Tensor, c2w: torch.Tensor | None = None) -> torch.Tensor:
    """One render per code (N, 3, C, R, R) from the same camera -> (N, H, W, 3)."""
    c2w = front_camera() if c2w is None else c2w
    K = intrinsics(model.cfg.image_res)
    return torch.cat([render_views(model, c, c2w, K) for c in codes])


def samples(model, n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n codes from the model's prior (DDIM, eta=0) and their renders."""
    gen = torch.Generator(model.codes.device).manual_seed(seed)
    codes = sample_codes(model, n, generator=gen)
    return codes, render_codes(model, codes)


def experiment_config(base: Config, views_per_scene: int = 0, k_in: int | None = None) -> Config:
    """`base` with views per scene (0 = all, 3 = the paper's sparse setting) and a constant K_in."""
    over = {"views_per_scene": views_per_scene}
    if k_in is not None:
        over["k_in_schedule"] = ((0, int(k_in)),)
    return replace(base, **over)


def run_experiment(mode: str, base: Config, views_per_scene: int = 0, k_in: int | None = None,
                   n_samples: int = 4, seed: int = 0, progress: bool = False) -> dict:
    """Train (or load from the cache) one model and report its codes and samples.

    The plain function behind the notebook's widgets: mode, views per scene and K_in.
    """
    cfg = experiment_config(base, views_per_scene, k_in)
    model = load_or_train(mode, cfg, progress=progress)
    codes, images = samples(model, n_samples, seed)
    return {"model": model, "stats": code_statistics(model.codes),
            "sample_stats": code_statistics(codes), "samples": images, "sample_codes": codes}


def compare_gradient_caching(tr, k_in: int = 4) -> dict:
    """What prior gradient caching saves, and what it costs, on one batch of scenes.

    Runs K_in inner steps twice from the same codes: (a) the cached way (one denoiser
    pass, its code gradient reused), (b) recomputing the diffusion gradient before every
    inner step (K_in denoiser passes) with the same t and noise, so that the only change
    is the codes having moved. Reports the cosine similarity between the cached gradient
    and each fresh one, the denoiser passes and the seconds of each way.
    Networks are not stepped and the codes are restored afterwards.
    """
    idx = tr.sample_scenes()
    saved_bank = copy.deepcopy(tr.bank.state_dict())
    saved_prior = copy.deepcopy(tr.prior.state_dict())
    saved_dec = copy.deepcopy(tr.decoder.state_dict())
    shape = (len(idx), 3, tr.cfg.code_ch, tr.cfg.code_res, tr.cfg.code_res)
    t = tr.prior.sample_t(len(idx), tr.device, generator=tr.gen)
    noise = randn(shape, tr.gen, tr.device)
    result = {}
    for way in ("cached", "recomputed"):
        tr.bank.load_state_dict(copy.deepcopy(saved_bank))
        t0, cos = time.perf_counter(), []
        with count_calls(tr.prior.unet) as passes:
            g_cached, _ = tr.diffusion_grad(idx, False, t, noise)
            for k in range(k_in):
                g = g_cached
                if way == "recomputed" and k > 0:
                    g, _ = tr.diffusion_grad(idx, False, t, noise)
                    cos.append(torch.nn.functional.cosine_similarity(
                        g.flatten(), g_cached.flatten(), dim=0).item())
                tr.rendering_step(idx, g, step_decoder=False)
        result[way] = {"denoiser_passes": passes.n, "seconds": time.perf_counter() - t0}
        if cos:
            result[way]["cosine_to_cached"] = cos
    tr.bank.load_state_dict(saved_bank)
    tr.prior.load_state_dict(saved_prior)
    tr.decoder.load_state_dict(saved_dec)
    return result
