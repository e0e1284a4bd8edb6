"""Code finetuning after guided sampling (eq. 7): networks frozen, only the code moves.

    x* = argmin_x  lambda_rend L_rend(x; observed rays) + lambda'_diff L_diff(x)        (7)
    lambda'_diff = c / EMA(mean(x0^2)),  c = TestConfig.ft_c_diff = 4 (the paper's c'_diff is 1;
    our validation sweep chose 4, docs/testtime_calibration.md; training's c_diff is also 4)

It has the structure of Algorithm 1 with psi and phi frozen: each OUTER iteration takes
one denoiser pass for the diffusion gradient g_diff on the code (the cached prior
gradient), then K_in = 4 INNER Adam steps each draw fresh rays and use
g_rend + g_diff. Modes:

    "rend+diff"  the paper's finetuning (A0, A1 in the ablation)
    "rend"       rendering loss only (A2)
    "none"       no finetuning: the guided sample itself (A3)

Schedules per number of input views (the paper's, `TestConfig.ft_schedule`; official
configs/paper_cfgs/ssdnerf_cars_recons1v.py and multiview_recons/ssdnerf_cars_recons{2,4,8,16,32}v.py:
`n_inverse_steps`, the finetuning `optimizer` lr and `lr_scheduler`; the loop is
diffusion_nerf.py `val_optim`). Adam, lr decays by 0.998 per step,

    views   1      2      4      8      16/32
    outer   25     50     100    160    200         (x 4 inner steps)
    lr      5e-3   1e-2   2e-2   4e-2   8e-2

Every constant (the weights lambda_rend = ft_c_rend (1 - exp(-0.1 N_v)) and lambda'_diff,
the schedule, the inner steps, the decay, the rays per step) lives in
`config.TestConfig`, stored with each model and calibrated on a validation split.

Choice: we optimise the pre-activation code_ = atanh(x / 2) (clamped just inside +-2)
and use x = 2 tanh(code_), exactly as in training, so the code can never leave the range
the denoiser was trained on. The rendering term is autodecoder.rendering_loss (the
training loss, code L2 penalty included); rays are drawn uniformly from all pixels of
the input views, `rays_per_step` per inner step (cfg.rays_per_scene by default).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from minissd.config import TestConfig
from minissd.nerf.autodecoder import RayBatch, code_step
from minissd.nerf.triplane import CodeBank
from minissd.prior.diffusion import prior_gradient
from minissd.testtime.guidance import subset_rays

FINETUNE_MODES = ("rend+diff", "rend", "none")


def finetune(decoder, prior, x: torch.Tensor, rays, cfg, n_views: int, mode: str = "rend+diff",
             *, tcfg: TestConfig | None = None, outer: int | None = None,
             lr: float | None = None, generator=None, callback=None,
             progress: bool = False) -> torch.Tensor:
    """Finetune codes x (B, 3, C, R, R) (activated) on rays = (origins, dirs, target)
    (each (B or 1, N, 3)); decoder and prior are not modified. Returns the new x.

    tcfg: the test-time settings (default TestConfig()); outer / lr override its schedule.
    callback(step, x, losses: dict) is called after every inner step.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"finetune: mode must be one of {FINETUNE_MODES}, got {mode!r}")
    if mode == "none":
        return x.detach().clone()
    tcfg = tcfg or TestConfig()
    d_outer, d_lr = tcfg.finetune_schedule(n_views)
    outer, lr = outer or d_outer, lr or d_lr
    inner, rays_per_step = tcfg.ft_inner, tcfg.ft_rays or cfg.rays_per_scene
    B = x.shape[0]
    bank = CodeBank.from_codes(x)                       # the codes to finetune, each with its Adam
    idx = torch.arange(B, device=bank.device)
    step = 0
    bar = tqdm(total=outer * inner, desc=f"finetune ({mode})", disable=not progress, leave=False)
    for _ in range(outer):
        # the cached prior gradient of eq. (7), grad lambda'_diff L_diff(2 tanh(code_)) per
        # scene: ONE denoiser pass per outer iteration (the function training uses)
        g_diff, l_diff = (prior_gradient(prior, bank.get(idx), tcfg.ft_c_diff, generator=generator)
                          if mode == "rend+diff" else (None, float("nan")))
        for _ in range(inner):
            o, d, y = (r.expand(B, -1, -1) for r in subset_rays(rays, rays_per_step, generator))
            with torch.enable_grad():                   # eq. (7): rendering + cached prior grad
                loss = code_step(bank, idx, decoder, RayBatch(o, d, y), cfg, n_views,
                                 lr * tcfg.ft_lr_decay ** step, prior_grad=g_diff,
                                 generator=generator, c_rend=tcfg.ft_c_rend)
            step += 1
            bar.update(1)
            if callback is not None:
                callback(step, bank.activated(), {"rend": float(loss.mean()), "diff": l_diff})
    bar.close()
    return bank.activated().to(x.device)
