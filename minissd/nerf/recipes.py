"""Auto-decoder recipes: what differs between minissd's auto-decoder loops, and nothing else.

`autodecoder_iteration` (autodecoder.py) is the one auto-decoder loop: notebooks 01-02,
stage 1 of the two-stage baseline and lines 6-13 of Algorithm 1 all run it. They differ
only in the three choices a `Recipe` names:

  * the code regulariser added to the rendering loss of eq. (1): the paper's L2 term
    code_reg * mean(x^2), or the official stage-1 baseline's total variation
    stage1_tv * TV(x)^1.5 (official lib/models/losses/tv_loss.py `TVLoss`);
  * the code initialisation: CodeBank's small uniform start, or the running mean code
    of the scenes seen so far (official `init_from_mean`, `mean_ema_update`);
  * the occupancy schedule: how often the batch's grids are rebuilt (torch-ngp's every 16
    steps, or the official SSDNeRF's once per outer iteration), with how many jittered
    probes, and whether before or after the rendering steps.

NOTEBOOK_RECIPE, SINGLE_STAGE_RECIPE and STAGE1_RECIPE hold the three loops' values.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from minissd.nerf.triplane import CodeBank


def tv_regulariser(x: torch.Tensor, power: float = 1.5) -> torch.Tensor:
    """Total variation of each plane, per scene: x (B, 3, C, R, R) -> (B,).

    mean over texels of ||(dx, dy)||^power with forward differences (zero at the last row
    and column), as the official `TVLoss` (lib/models/losses/tv_loss.py) that regularises
    the codes in stage 1 of the two-stage baseline (power 1.5, weight 1)."""
    dx = torch.nn.functional.pad(x.diff(dim=-1), (0, 1))
    dy = torch.nn.functional.pad(x.diff(dim=-2), (0, 0, 0, 1))
    return (dx.pow(2) + dy.pow(2) + 1e-12).sqrt().pow(power).flatten(1).mean(1)


def code_regulariser(x: torch.Tensor, cfg, kind: str = "l2") -> torch.Tensor:
    """The code term of the rendering loss, per scene (B,): "l2" cfg.code_reg * mean(x^2)
    (the paper's configs), "tv" cfg.stage1_tv * TV^1.5 (the official stage-1 baseline)."""
    if kind == "l2":
        return cfg.code_reg * x.pow(2).flatten(1).mean(1)
    if kind == "tv":
        return cfg.stage1_tv * tv_regulariser(x)
    raise ValueError(f"code_regulariser: kind must be 'l2' or 'tv', got {kind!r}")


# How often train_autodecoder rebuilds the batch's occupancy grids: torch-ngp's
# `update_extra_interval` (16 steps; the official code's ray marcher and density grid come
# from torch-ngp). The official SSDNeRF refreshes once per outer iteration (occ_every=1).
TORCH_NGP_OCC_EVERY = 16
# Momentum of the running mean code that stage 1 of the baseline starts new codes from
# (official `mean_ema_update`).
MEAN_CODE_MOMENTUM = 1e-3


@dataclass(frozen=True)
class Recipe:
    """How an auto-decoder iteration treats codes and occupancy grids (`autodecoder_iteration`).

    reg: the code regulariser, "l2" (cfg.code_reg * mean(x^2), the paper) or "tv"
      (cfg.stage1_tv * TV^1.5, the official stage 1 of the two-stage baseline);
    init: "uniform" (codes keep CodeBank's U(+-1e-4) start) or "mean" (a scene's code is
      set to the running mean code when the scene is first drawn, official `init_from_mean`);
    occ_every: the batch's grids are rebuilt every occ_every iterations after warm-up;
    occ_jitter: random probes per cell besides its centre when rebuilding;
    occ_first: rebuild before the batch's rendering steps (official) or after them;
    mean_loss: the rendering losses are averaged over the batch's scenes (True, the E_i of
      eq. 1) or summed (False).
    """
    reg: str = "l2"
    init: str = "uniform"
    occ_every: int = TORCH_NGP_OCC_EVERY
    occ_jitter: int = 4
    occ_first: bool = False
    mean_loss: bool = False

    def __post_init__(self):
        if self.reg not in ("l2", "tv") or self.init not in ("uniform", "mean") or self.occ_every < 1:
            raise ValueError(f"Recipe: reg 'l2'|'tv', init 'uniform'|'mean', occ_every >= 1; got {self}")


NOTEBOOK_RECIPE = Recipe()           # train_autodecoder: notebooks 01-02 and bench_autodecoder
# Algorithm 1's rendering half, and the official stage-1 configs (TV^1.5 weight 1, mean-code
# init); both refresh the grids once per outer iteration before rendering, as the official code
SINGLE_STAGE_RECIPE = Recipe(reg="l2", init="uniform", occ_every=1, occ_jitter=1, occ_first=True,
                             mean_loss=True)
STAGE1_RECIPE = replace(SINGLE_STAGE_RECIPE, reg="tv", init="mean")


@torch.no_grad()
def init_from_mean(bank: CodeBank, idx, mean_code: torch.Tensor) -> None:
    """Codes of the scenes of idx never stepped yet <- the mean code (3, C, R, R)."""
    new = bank.fresh(idx)
    if len(new):
        bank.set_activated(new, mean_code[None])


@torch.no_grad()
def update_mean_code(bank: CodeBank, idx, mean_code: torch.Tensor,
                     momentum: float = MEAN_CODE_MOMENTUM, average=None) -> None:
    """In place: mean_code <- EMA of the batch-mean activated code. `average(t)` (torchrun:
    distributed.ShardedTrainer) replaces t in place by its mean over the ranks' batches."""
    batch_mean = bank.activated(idx).mean(0)                                # (3, C, R, R)
    if average is not None:
        average(batch_mean)
    mean_code.mul_(1 - momentum).add_(momentum * batch_mean)


def refresh_due(it: int, occ_warmup: int, recipe: Recipe) -> bool:
    """Does iteration `it` rebuild the batch's grids? (never during warm-up)"""
    return it >= occ_warmup and it % recipe.occ_every == 0
