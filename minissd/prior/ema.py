"""Exponential moving average of network weights (test time uses EMA weights; official
configs: the `ExponentialMovingAverageHook` on `diffusion_ema` and `decoder_ema`).

    theta_ema <- beta * theta_ema + (1 - beta) * theta,      beta ~ 0.997 (paper)

Buffers (GroupNorm has none, but `DiffusionPrior.x0_sq_ema` is one) are copied as-is:
an average of running statistics is not what anyone wants at test time.

    ema = ema_copy(prior)                       # frozen deepcopy, eval mode
    ...optimizer.step(); ema_update(ema, prior, cfg.ema_beta)
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen (requires_grad=False, eval mode) deep copy of `model`."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema.eval()


def ema_beta_at(it: int, beta: float, rampup: float = 0.05) -> float:
    """The EMA rate after `it` iterations, with the official ramp-up (mmgen's "rampup"
    momentum policy, used by the SSDNeRF configs): the EMA's half-life, in iterations,
    is min(H, rampup * it), where H is beta's own half-life ln 0.5 / ln beta. Early
    weights are forgotten fast, so the EMA is not stuck near the random init;
    rampup = 0 turns the ramp off (constant beta)."""
    if rampup <= 0 or beta <= 0:
        return beta
    half_life = min(math.log(0.5) / math.log(beta), rampup * max(it, 0))
    return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, beta: float) -> None:
    """In place: ema params <- beta * ema + (1 - beta) * model; buffers copied."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"ema.py: beta must be in [0, 1], got {beta}")
    ema_p, p = dict(ema_model.named_parameters()), dict(model.named_parameters())
    if ema_p.keys() != p.keys():
        raise ValueError("ema.py: ema_model and model have different parameters "
                         f"({sorted(set(ema_p) ^ set(p))[:5]} ...)")
    for name, param in p.items():
        ema_p[name].lerp_(param.detach().to(ema_p[name].dtype), 1.0 - beta)
    ema_b = dict(ema_model.named_buffers())
    for name, buf in model.named_buffers():
        if name in ema_b:
            ema_b[name].copy_(buf)
