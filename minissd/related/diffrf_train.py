"""Training DiffRF in two stages, resumable: fit a voxel grid per scene (voxel.fit_grids),
then train the 3D UNet with L_RF + lambda_RGB L_RGB (diffrf.diffrf_losses, eqs. 7-11).

    python -m minissd train --model diffrf --preset laptop --data DIR --out runs/diffrf

One counter `it` runs over cfg.fit_iters fitting steps, then cfg.iters denoiser steps;
checkpoint.pt (atomic, every cfg.ckpt_every steps and at the end of each stage) holds the
grids with their per-scene Adam states, the UNet, its EMA and optimiser, the RNG and the
log, so `--resume` continues exactly. model.pt (diffrf.DiffRFModel) holds what test time
needs: EMA UNet and grids, in half precision.

Unlike SSDNeRF (ssd/train.py), nothing flows back from the prior to the fields: the grids
are frozen data for the denoiser (DiffRF's two-stage recipe), and L_RGB's gradient
reaches only the UNet, through the renders of its own denoised field.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import torch
from tqdm.auto import tqdm

from minissd.config import cache_dir
from minissd.data.procedural import ensure_dataset
from minissd.errors import TrainingDiverged
from minissd.nerf.autodecoder import sample_rays
from minissd.prior.ema import ema_copy, ema_update
from minissd.related.diffrf import DiffRFConfig, DiffRFModel, VoxelPrior, diffrf_losses
from minissd.related.voxel import empty_grids, fit_grids, fit_psnr, voxel_bank
from minissd.runtime import tick
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.model import data_id, load_training_data, model_dirs
from minissd.ssd.train import warmup_factor
from minissd.utils import randperm

FORMAT = "minissd-diffrf-train-v1"


class DiffRFTrainer:
    def __init__(self, cfg: DiffRFConfig, data: dict, device="cpu", out_dir: str | None = None,
                 data_key: str = ""):
        self.cfg, self.device, self.out_dir, self.data_key = cfg, torch.device(device), out_dir, data_key
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

    def grids(self) -> torch.Tensor:
        return self.bank.activated().detach()                               # (N, 4, G, G, G)

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

    def train(self, progress: bool = True, stop_after: int | None = None) -> list:
        end = self.total_iters if stop_after is None else min(self.total_iters, self.it + stop_after)
        bar = tqdm(total=end, initial=self.it, disable=not progress, desc="diffrf")
        while self.it < end:
            t0 = time.time()
            if self.it < self.cfg.fit_iters:
                stop = min(end, self.cfg.fit_iters, (self.it // self.cfg.ckpt_every + 1) * self.cfg.ckpt_every)
                rows = []
                fit_grids(self.data, self.cfg, self.bank, self.it, stop, self.gen, progress=False,
                          callback=lambda s, b, mse: rows.append(fit_psnr(mse)))
                n = stop - self.it
                row = {"phase": "fit", "fit_psnr": sum(rows) / len(rows)}
                self.it = stop
            else:
                row, n = self.diffusion_step(), 1
                tick()                        # threads follow the free CPU (runtime.py)
                self.it += 1
            row.update(iter=self.it, wall_s=round(time.time() - t0, 3))
            bad = [k for k, v in row.items() if isinstance(v, float) and not torch.isfinite(torch.tensor(v))]
            if bad:
                raise TrainingDiverged(f"DiffRF training diverged at iteration {self.it} ({bad}); "
                                       f"the last checkpoint in {self.out_dir} is kept")
            self.log.append(row)
            bar.update(n)
            bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith(("loss", "fit_"))},
                            refresh=False)
            if self.out_dir and (self.it % self.cfg.ckpt_every == 0 or self.it in (end, self.cfg.fit_iters)):
                self.save()
        bar.close()
        return self.log

    # ------------------------------------------------------------- checkpoints ----
    def ckpt_path(self) -> str:
        return os.path.join(self.out_dir, "checkpoint.pt")

    def state_dict(self) -> dict:
        return {"format": FORMAT, "config": self.cfg.to_dict(), "data_id": self.data_key,
                "iter": self.it, "bank": self.bank.state_dict(), "prior": self.prior.state_dict(),
                "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "log": self.log}

    def save(self) -> str:
        sd = self.state_dict()
        bad = ckpt.nonfinite({k: sd[k] for k in ("bank", "prior", "ema")})
        if bad:
            raise TrainingDiverged(f"non-finite parameters {bad[:5]}; {self.ckpt_path()} is kept")
        return ckpt.save_atomic(self.ckpt_path(), sd)

    def resume(self) -> bool:
        path = self.ckpt_path()
        if not os.path.exists(path):
            return False
        sd = ckpt.load(path, map_location=self.device)
        if sd.get("format") != FORMAT:
            raise ckpt.CheckpointError(f"{path}: format {sd.get('format')!r}, expected {FORMAT!r}")
        ckpt.check_config(path, sd["config"], self.cfg.to_dict())
        if sd["data_id"] != self.data_key:
            raise ckpt.CheckpointError(f"{path}: made with data {sd['data_id']!r}, this run has {self.data_key!r}")
        self.bank.load_state_dict(sd["bank"])
        self.prior.load_state_dict(sd["prior"])
        self.ema.load_state_dict(sd["ema"])
        self.opt.load_state_dict(sd["opt"])
        self.gen.set_state(sd["rng"])
        torch.set_rng_state(sd["torch_rng"])
        self.it, self.log = sd["iter"], list(sd["log"])
        return True

    def model(self, meta: dict | None = None) -> DiffRFModel:
        prior = VoxelPrior(self.cfg)
        prior.load_state_dict(self.ema.state_dict())
        prior.eval().requires_grad_(False)
        return DiffRFModel(self.cfg, prior, self.grids().cpu(), list(self.data.get("names", [])),
                           list(self.log), dict(meta or {}))


def train_diffrf(cfg: DiffRFConfig, data_dir: str, out_dir: str, device="cpu", resume: bool = True,
                 progress: bool = True, stop_after: int | None = None) -> DiffRFTrainer:
    """Train (or resume) a DiffRF run in out_dir, holding its RunLock; returns the trainer."""
    with ckpt.RunLock(out_dir):
        data = load_training_data(data_dir, cfg, device)
        tr = DiffRFTrainer(cfg, data, device, out_dir, data_id(data_dir, len(data["names"])))
        if resume and tr.resume() and progress:
            print(f"resumed {out_dir} at iteration {tr.it}/{tr.total_iters}")
        ckpt.remove_orphans(out_dir)
        tr.train(progress=progress, stop_after=stop_after)
    return tr


def diffrf_key(cfg: DiffRFConfig, category: str = "cars") -> str:
    """A readable name plus a hash of the whole config (like ssd.model.model_key)."""
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{category}-diffrf-{cfg.name}-{cfg.iters}it-{digest}"


def load_or_train_diffrf(cfg: DiffRFConfig, category: str = "cars", device="cpu",
                         progress: bool = True) -> DiffRFModel:
    """The DiffRF model of cfg: shipped (ssd.model.model_dirs()), cached, or trained now
    (resumably, in the cache) on the same procedural training set as the SSDNeRF models."""
    key = diffrf_key(cfg, category)
    cached = os.path.join(cache_dir(), "models", key + ".pt")
    for path in [os.path.join(d, key + ".pt") for d in model_dirs()] + [cached]:
        if os.path.exists(path):
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
