"""DDIM sampling (Song et al. 2021, eq. 12) over any denoiser `denoise(x_t, t) -> x0_hat`.

For the timestep sub-sequence t_0 > t_1 > ... > t_{S-1} (S = steps; the official
spacing t_i = floor(T - 1 - i T / S), i.e. 999, 979, ..., 19 for S = 50) and s = t_{i+1}
(alpha_s = 1, sigma_s = 0 after the last step):

    x0_hat  = clip(denoise(x_t, t), +-2)                  (the code range of 2 tanh)
    eps_hat = (x_t - alpha_t x0_hat) / sigma_t
    c       = eta * (sigma_s / sigma_t) * sqrt(1 - alpha_t^2 / alpha_s^2)
    x_s     = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,    z ~ N(0, I)

eta = 0 is the deterministic DDIM the paper uses (50 steps to generate, 75 to
reconstruct); eta = 1 is DDPM-like ancestral sampling on the sub-sequence.

Guidance (guidance.py) wraps `denoise`; it gets alpha/sigma of t from the same schedule.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from minissd.prior.diffusion import eps_from_x0
from minissd.runtime import tick
from minissd.utils import clip_x0, per_sample, randn_like


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """(steps,) long, decreasing from T-1 (official spacing)."""
    if not 1 <= steps <= T:
        raise ValueError(f"sampling.py: steps must be in [1, {T}], got {steps}")
    i = torch.arange(steps, dtype=torch.float64)
    return torch.floor(T - 1 - i * T / steps).long()


def _alpha_sigma(schedule, t: int, x: torch.Tensor):
    """alpha, sigma (B,) at integer t for a batch like x; t < 0 means 'clean' (1, 0)."""
    B = x.shape[0]
    if t < 0:
        return x.new_ones(B), x.new_zeros(B)
    tt = torch.full((B,), int(t), dtype=torch.long, device=x.device)
    a, s = schedule.alpha_sigma(tt)
    return a.to(x.dtype), s.to(x.dtype)


def ddim_step(x0_hat, x_t, t: int, s: int, schedule, eta=0.0, generator=None):
    """One DDIM update t -> s (s = -1 means the clean end) given x0_hat (eq. 12)."""
    a_t, s_t = _alpha_sigma(schedule, t, x_t)
    a_s, s_s = _alpha_sigma(schedule, s, x_t)
    eps = eps_from_x0(x_t, x0_hat, a_t, s_t)
    c = eta * (s_s / s_t) * (1 - (a_t / a_s) ** 2).clamp(min=0).sqrt()     # (B,)
    dir_coef = (s_s ** 2 - c ** 2).clamp(min=0).sqrt()
    x_s = per_sample(a_s, x_t) * x0_hat + per_sample(dir_coef, x_t) * eps
    if eta > 0 and s >= 0:
        x_s = x_s + per_sample(c, x_t) * randn_like(x_t, generator)
    return x_s


@torch.no_grad()
def ddim_sample(denoise, x_T, schedule, steps: int = 50, eta: float = 0.0, generator=None,
                clip=2.0, callback=None, progress: bool = False):
    """DDIM from x_T (B, ...) ~ N(0, I) to x0 (B, ...).

    denoise(x_t, t (B,) long) -> x0_hat; callback(i, t, x_t, x0_hat) after each model
    call (trajectories). The loop runs under no_grad; a guidance wrapper may re-enable
    grad inside `denoise`."""
    ts = ddim_timesteps(schedule.T, steps).tolist()
    x = x_T
    it = ts
    if progress:
        it = tqdm(ts, desc="DDIM", leave=False)
    for i, t in enumerate(it):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0_hat = clip_x0(denoise(x, tt), clip)
        if callback is not None:
            callback(i, t, x, x0_hat)
        x = ddim_step(x0_hat, x, t, s, schedule, eta, generator)
        tick()                                  # threads follow the free CPU (runtime.py)
    return x
