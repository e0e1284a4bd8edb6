"""Exponential moving average of network weights (REFERENCE 3: test time uses EMA weights).

    theta_ema <- beta * theta_ema + (1 - beta) * theta,      beta ~ 0.997 (paper)

Buffers (GroupNorm has none, but `DiffusionPrior.x0_sq_ema` is one) are copied as-is:
an average of running statistics is not what anyone wants at test time.

    ema = ema_copy(prior)                       # frozen deepcopy, eval mode
    ...optimizer.step(); ema_update(ema, prior, cfg.ema_beta)
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen (requires_grad=False, eval mode) deep copy of `model`."""
    ema = copy.deepcopy(model)
    ema.requires_grad_(False)
    return ema.eval()


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
