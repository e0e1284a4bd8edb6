"""Code finetuning after guided sampling (eq. 7): networks frozen, only the code moves.

    x* = argmin_x  lambda_rend L_rend(x; observed rays) + lambda'_diff L_diff(x)        (7)
    lambda'_diff = c / EMA(mean(x0^2)),  c = 1 at test time (4 in training)

It has the structure of Algorithm 1 with psi and phi frozen: each OUTER iteration takes
one denoiser pass for the diffusion gradient g_diff on the code (the cached prior
gradient), then K_in = 4 INNER Adam steps each draw fresh rays and use
g_rend + g_diff. Modes:

    "rend+diff"  the paper's finetuning (A0, A1 in the ablation)
    "rend"       rendering loss only (A2)
    "none"       no finetuning: the guided sample itself (A3)

Schedules per number of input views (official configs/paper_cfgs/ssdnerf_cars_recons1v.py
and multiview_recons/ssdnerf_cars_recons{2,4,8,16,32}v.py: `n_inverse_steps`, the
finetuning `optimizer` lr and `lr_scheduler`; the loop is diffusion_nerf.py `val_optim`).
Adam, lr decays by 0.998 per step,

    views   1      2      4      8      16/32
    outer   25     50     100    160    200         (x 4 inner steps)
    lr      5e-3   1e-2   2e-2   4e-2   8e-2

Choice: we optimise the pre-activation code_ = atanh(x / 2) (clamped just inside +-2)
and use x = 2 tanh(code_), exactly as in training, so the code can never leave the range
the denoiser was trained on. The rendering term is autodecoder.rendering_loss (the
training loss, code L2 penalty included); rays are drawn uniformly from all pixels of
the input views, `rays_per_step` per inner step (cfg.rays_per_scene by default).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .guidance import subset_rays
from .triplane import code_activation, code_inverse_activation, planes_to_image

MODES = ("rend+diff", "rend", "none")
# n_views (lower bound) -> (outer iterations, learning rate)
SCHEDULES = ((1, 25, 5e-3), (2, 50, 1e-2), (4, 100, 2e-2), (8, 160, 4e-2), (16, 200, 8e-2))
INNER = 4
LR_DECAY = 0.998
C_DIFF_FINETUNE = 1.0


def schedule_for(n_views: int) -> tuple[int, float]:
    """(outer iterations, lr) for n_views input views (the largest entry <= n_views)."""
    outer, lr = SCHEDULES[0][1:]
    for v, o, r in SCHEDULES:
        if n_views >= v:
            outer, lr = o, r
    return outer, lr


def prior_grad(prior, code_: torch.Tensor, c: float = C_DIFF_FINETUNE, generator=None):
    """The cached prior gradient: grad_{code_} lambda'_diff * L_diff(2 tanh(code_)),
    one denoiser pass. code_ (B, 3, C, R, R) -> same shape, plus the loss value."""
    with torch.enable_grad():
        code_ = code_.detach().requires_grad_(True)
        x0 = planes_to_image(code_activation(code_))                    # (B, 3C, R, R)
        loss = prior.loss(x0, generator=generator)                      # (B,)
        g, = torch.autograd.grad(prior.lambda_diff(c) * loss.sum(), code_)
    return g, float(loss.detach().mean())


def finetune(decoder, prior, x: torch.Tensor, rays, cfg, n_views: int, mode: str = "rend+diff",
             outer: int | None = None, inner: int = INNER, lr: float | None = None,
             decay: float = LR_DECAY, rays_per_step: int | None = None, generator=None,
             callback=None, progress: bool = False) -> torch.Tensor:
    """Finetune codes x (B, 3, C, R, R) (activated) on rays = (origins, dirs, target)
    (each (B or 1, N, 3)); decoder and prior are not modified. Returns the new x.

    callback(step, x, losses: dict) is called after every inner step.
    """
    if mode not in MODES:
        raise ValueError(f"finetune: mode must be one of {MODES}, got {mode!r}")
    if mode == "none":
        return x.detach().clone()
    from .autodecoder import rendering_loss
    d_outer, d_lr = schedule_for(n_views)
    outer, lr = outer or d_outer, lr or d_lr
    rays_per_step = rays_per_step or cfg.rays_per_scene
    B = x.shape[0]
    code_ = code_inverse_activation(x.detach()).clone().requires_grad_(True)
    opt = torch.optim.Adam([code_], lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=decay)
    step = 0
    bar = tqdm(total=outer * inner, desc=f"finetune ({mode})", disable=not progress, leave=False)
    for _ in range(outer):
        g_diff, l_diff = (prior_grad(prior, code_, generator=generator) if mode == "rend+diff"
                          else (None, float("nan")))                    # once per outer
        for _ in range(inner):
            o, d, y = (r.expand(B, -1, -1) for r in subset_rays(rays, rays_per_step, generator))
            with torch.enable_grad():
                loss = rendering_loss(decoder, code_activation(code_), o, d, y, cfg, n_views,
                                      generator=generator)              # (B,)
                g, = torch.autograd.grad(loss.sum(), code_)
            code_.grad = g if g_diff is None else g + g_diff            # cached prior grad
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if callback is not None:
                callback(step, code_activation(code_.detach()),
                         {"rend": float(loss.detach().mean()), "diff": l_diff})
    bar.close()
    return code_activation(code_.detach())
