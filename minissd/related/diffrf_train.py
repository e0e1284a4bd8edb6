"""Training DiffRF in two stages, resumable: fit a voxel grid per scene (voxel.fit_grids),
then train the 3D UNet with L_RF + lambda_RGB L_RGB (diffrf.diffrf_losses, eqs. 7-11).

    python -m minissd train --model diffrf --preset laptop --data DIR --out runs/diffrf

One counter `it` runs over cfg.fit_iters fitting steps, then cfg.iters denoiser steps;
checkpoint.pt (atomic, every cfg.ckpt_every steps and at the end of each stage) holds the
grids with their per-scene Adam states, the UNet, its EMA and optimiser, the RNG and the
log (one row per step, also in log.jsonl), so `--resume` continues exactly. model.pt
(diffrf.DiffRFModel) holds what test time needs: EMA UNet and grids, in half precision.
`DiffRFTrainer` runs in SSDNeRF's loop (ssd/resume.py `ResumableLoop`): run lock, a
finiteness check of the losses, grids, UNet and EMA every step (a NaN stops the run and
keeps the last good checkpoint), the resume line on Ctrl-C.

Unlike SSDNeRF (ssd/train.py), nothing flows back from the prior to the fields: the grids
are frozen data for the denoiser (DiffRF's two-stage recipe), and L_RGB's gradient
reaches only the UNet, through the renders of its own denoised field.
"""
from __future__ import annotations

import os
import time

import torch

from minissd.config import cache_dir
from minissd.data.procedural import ensure_dataset
from minissd.nerf.autodecoder import sample_rays
from minissd.prior.ema import ema_copy, ema_update
from minissd.related.diffrf import DiffRFConfig, DiffRFModel, VoxelPrior, diffrf_losses
from minissd.related.voxel import empty_grids, fit_grids, fit_psnr, voxel_bank
from minissd.ssd.model import config_digest, find_model_file, train_baseline
from minissd.ssd.resume import ResumableLoop
from minissd.ssd.train import warmup_factor
from minissd.utils import randperm

FORMAT = "minissd-diffrf-train-v1"


class DiffRFTrainer(ResumableLoop):
    """Both stages' state (grids and their per-scene Adams, UNet, EMA, optimiser, RNG, log)
    with resume.ResumableLoop's loop: run lock, atomic checkpoints, a finiteness check of
    the losses, grids, UNet and EMA every iteration, the divergence stop."""
    FORMAT, mode, LR_EXAMPLE = FORMAT, "diffrf", "lr"
    SHOWN = {"fit_psnr": ".4g", "loss_rf": ".4g", "loss_rgb": ".4g"}
    STATE_KEYS = ("format", "config", "data_id", "iter", "bank", "prior", "ema", "opt", "rng",
                  "torch_rng", "log")

    def __init__(self, cfg: DiffRFConfig, data: dict, device="cpu", out_dir: str | None = None,
                 data_key: str = ""):
        self.cfg, self.device, self.out_dir, self.data_id = cfg, torch.device(device), out_dir, data_key
        self.data = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in data.items()}
        self.n_scenes = self.data["images"].shape[0]
        torch.manual_seed(cfg.seed)
        self.bank = voxel_bank(empty_grids(self.n_scenes, cfg.grid_res, self.device))
        self.prior = VoxelPrior(cfg).to(self.device)
        self.opt = torch.optim.Adam(self.prior.parameters(), lr=cfg.lr)
        self.ema = ema_copy(self.prior)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.it, self.log = 0, []

    @property
    def total_iters(self) -> int:
        return self.cfg.fit_iters + self.cfg.iters

    def schedule_note(self) -> str:
        return f"fit_iters {self.cfg.fit_iters} + iters {self.cfg.iters}"

    def iters_to_reach(self, it: int) -> int:
        return it - self.cfg.fit_iters

    def grids(self) -> torch.Tensor:
        return self.bank.activated().detach()                               # (N, 4, G, G, G)

    def fit_step(self) -> dict:
        """One step of stage 1: an Adam step of a batch of grids (voxel.fit_grids)."""
        psnr = []
        fit_grids(self.data, self.cfg, self.bank, self.it, self.it + 1, self.gen, progress=False,
                  callback=lambda s, b, mse: psnr.append(fit_psnr(mse)))
        return {"phase": "fit", "fit_psnr": psnr[0]}

    def diffusion_step(self) -> dict:
        """One denoiser update on a batch of fitted grids (eq. 11)."""
        cfg = self.cfg
        idx = randperm(self.n_scenes, self.gen, self.device)[:cfg.batch]
        rays = sample_rays(self.data, idx, cfg.rgb_rays, self.gen)
        for g in self.opt.param_groups:
            g["lr"] = cfg.lr * warmup_factor(self.it - cfg.fit_iters, cfg.warmup)
        out = diffrf_losses(self.prior, self.grids()[idx], rays, cfg, generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].mean().backward()
        self.opt.step()
        ema_update(self.ema, self.prior, cfg.ema_beta)
        return {"phase": "diffusion", "loss_rf": float(out["rf"].detach().mean()),
                "loss_rgb": float(out["rgb"].detach().mean())}

    def outer_step(self) -> dict:
        """One step of the schedule: grid fitting (it < fit_iters), then the denoiser."""
        t0 = time.time()
        row = self.fit_step() if self.it < self.cfg.fit_iters else self.diffusion_step()
        self.it += 1
        row.update(iter=self.it, wall_s=round(time.time() - t0, 3))
        self.log.append(row)
        return row

    def loss_keys(self, row: dict) -> tuple:
        return ("fit_psnr",) if row["phase"] == "fit" else ("loss_rf", "loss_rgb")

    def checkpoint_due(self, end: int) -> bool:
        """Also at the end of stage 1 (the fitted grids are kept)."""
        return super().checkpoint_due(end) or self.it == self.cfg.fit_iters

    def watched(self) -> dict:
        return {"bank": {"codes_": self.bank.codes_}, "prior": self.prior, "ema": self.ema}

    # ------------------------------------------------------------- checkpoints ----
    def state_dict(self) -> dict:
        return {"format": FORMAT, "config": self.cfg.to_dict(), "data_id": self.data_id,
                "iter": self.it, "bank": self.bank.state_dict(), "prior": self.prior.state_dict(),
                "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "log": self.log}

    def load_state_dict(self, sd: dict, path: str = "<checkpoint>") -> None:
        self.check_checkpoint(sd, path)
        self.load_parts(sd, path, {"bank": self.bank.load_state_dict,
                                   **{k: getattr(self, k).load_state_dict for k in ("prior", "ema", "opt")},
                                   "rng": self.gen.set_state,
                                   "torch_rng": lambda s: torch.set_rng_state(s.cpu())})

    def model(self, meta: dict | None = None) -> DiffRFModel:
        prior = VoxelPrior(self.cfg)
        prior.load_state_dict(self.ema.state_dict())
        prior.eval().requires_grad_(False)
        return DiffRFModel(self.cfg, prior, self.grids().cpu(), list(self.data.get("names", [])),
                           list(self.log), dict(meta or {}))


def train_diffrf(cfg: DiffRFConfig, data_dir: str, out_dir: str, device="cpu", resume: bool = True,
                 progress: bool = True, stop_after: int | None = None) -> DiffRFTrainer:
    """Train (or resume) a DiffRF run in out_dir, holding its RunLock; returns the trainer."""
    return train_baseline(DiffRFTrainer, cfg, data_dir, out_dir, device, resume, progress, stop_after)


def diffrf_key(cfg: DiffRFConfig, category: str = "cars") -> str:
    """A readable name plus a hash of the whole config (like ssd.model.model_key)."""
    return f"{category}-diffrf-{cfg.name}-{cfg.iters}it-{config_digest(cfg)}"


def load_or_train_diffrf(cfg: DiffRFConfig, category: str = "cars", device="cpu",
                         progress: bool = True) -> DiffRFModel:
    """The DiffRF model of cfg: shipped (ssd.model.model_dirs()), cached, or trained now
    (resumably, in the cache) on the same procedural training set as the SSDNeRF models."""
    key = diffrf_key(cfg, category)
    cached = os.path.join(cache_dir(), "models", key + ".pt")
    path = find_model_file(key)
    if path:
        return DiffRFModel.load(path, device)
    print(f"[minissd] no shipped or cached DiffRF model {key}.pt: training it now "
          f"(resumable, cached as {cached})", flush=True)
    data_dir = ensure_dataset(category, "train", n_scenes=cfg.data_scenes, n_views=cfg.data_views,
                              resolution=cfg.image_res, seed=0)
    t0 = time.time()
    tr = train_diffrf(cfg, data_dir, os.path.join(cache_dir(), "runs", key), device, progress=progress)
    model = tr.model({"key": key, "wall_s": round(time.time() - t0, 1)})
    model.save(cached)
    return model.to(device)
