"""Fitting CodeNeRF: auto-decoder training (the paper's eq. 4) and posed test-time
optimisation of the two codes (eq. 5 with the camera given). Official code:
wbjang/code-nerf src/trainer.py `Trainer.training` and src/optimizer.py `optimize_objs`.

Training, per iteration, for a batch of B objects i with R random rays each:

    L = 1/|R| sum_r ||C(r; z_s^i, z_t^i) - C_gt(r)||^2 / 3  +  code_reg (|z_s^i|^2 + |z_t^i|^2)
    Theta <- Adam(grad_Theta L),   z^i <- Adam_i(grad_{z^i} L)            (own Adam per object)

Test time, one image, known camera (`fit_codes_posed`, official defaults in optimize.py):
z starts at the MEAN of the trained codes, AdamW(lr 1e-2, halved every 50 steps), 200
steps, loss = MSE + 1e-4 (|z_s| + |z_t|) (official: the norms, not their squares).

    python -m minissd train --model codenerf --preset laptop --data DIR --out RUN [--resume]

The run folder holds checkpoint.pt (everything to resume, written atomically every
ckpt_every iterations and at the end), log.jsonl and model.pt (a `CodeNeRF` file).
`CodeNeRFTrainer` runs in SSDNeRF's loop (ssd/resume.py `ResumableLoop`): run lock, a
finiteness check of the loss, network and codes every iteration (a NaN stops the run and
keeps the last good checkpoint), the resume line on Ctrl-C.

Departures: each test step uses `rays` random pixels of the image (official: all pixels in
chunks of 2048); the halving keeps AdamW's moments (official: a fresh optimiser).
"""
from __future__ import annotations

import os
import time

import torch

from minissd.config import cache_dir, pick_device
from minissd.data.cameras import rays_at_pixels
from minissd.data.procedural import ensure_dataset
from minissd.nerf.autodecoder import sample_rays
from minissd.nerf.render import render_image, render_rays
from minissd.related.codenerf import (
    CodeNeRF,
    CodeNeRFConfig,
    CodeNeRFNet,
    LatentBank,
    make_field,
)
from minissd.ssd.model import config_digest, find_model_file, train_baseline
from minissd.ssd.resume import ResumableLoop
from minissd.utils import randint, to_device

CKPT_FORMAT = "minissd-codenerf-ckpt-v1"


# ------------------------------------------------------------------------ training
def photometric_loss(net, codes: torch.Tensor, origins, dirs, target, cfg, generator=None,
                     stratified: bool = True) -> torch.Tensor:
    """Per-object MSE (B,) of rendered vs target colours: rays (B, N, 3)."""
    out = render_rays(make_field(net, codes), origins, dirs, cfg.n_samples, near_min=cfg.near_min,
                      stratified=stratified, generator=generator)
    return (out["rgb"] - target).pow(2).mean(dim=(1, 2))


def train_step(net, opt, bank: LatentBank, data: dict, cfg: CodeNeRFConfig, it: int,
               generator: torch.Generator) -> dict:
    """One auto-decoder iteration (eq. 4) on a random batch of objects; returns its stats."""
    N = bank.codes_.shape[0]
    idx = torch.randperm(N, generator=generator)[:min(cfg.scenes_per_batch, N)]
    rays = sample_rays(data, idx, cfg.rays_per_scene, generator)
    for g in opt.param_groups:                                           # linear warm-up
        g["lr"] = cfg.lr_net * min(1.0, (it + 1) / max(1, cfg.warmup))
    codes = bank.get(idx, bank.device)                                   # (B, 2, D) leaf
    opt.zero_grad(set_to_none=True)
    mse = photometric_loss(net, codes, *rays, cfg, generator)            # (B,)
    reg = cfg.code_reg * codes.pow(2).sum(dim=(1, 2))                    # (B,)
    (mse + reg).sum().backward()
    opt.step()
    bank.adam_step(idx, codes.grad, cfg.lr_code)
    mse = mse.detach()
    return {"iter": it, "mse": float(mse.mean()), "psnr": float(-10 * torch.log10(mse.mean())),
            "code_norm": float(codes.detach().norm(dim=-1).mean())}


class CodeNeRFTrainer(ResumableLoop):
    """The auto-decoder's state (network, per-object codes and their Adams, generator,
    log) with resume.ResumableLoop's loop: run lock, atomic checkpoints, a finiteness
    check of the loss, network and codes every iteration, the divergence stop."""
    FORMAT, ITER_KEY, mode = CKPT_FORMAT, "it", "CodeNeRF"
    SHOWN = {"psnr": ".2f"}
    STATE_KEYS = ("format", "config", "data_id", "it", "net", "opt", "bank", "generator", "log")

    def __init__(self, cfg: CodeNeRFConfig, data: dict, device="cpu", out_dir: str | None = None,
                 data_key: str = ""):
        self.cfg, self.device, self.out_dir, self.data_id = cfg, torch.device(device), out_dir, data_key
        self.data = to_device(data, self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.net = CodeNeRFNet(cfg).to(self.device)
        self.bank = LatentBank(len(self.data["names"]), cfg.latent, self.device, generator=self.gen)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr_net)
        self.it, self.log, self.t0 = 0, [], time.time()

    @property
    def total_iters(self) -> int:
        return self.cfg.iters

    def outer_step(self) -> dict:
        """One train_step; its row (with seconds since this session began) is logged."""
        row = train_step(self.net, self.opt, self.bank, self.data, self.cfg, self.it, self.gen)
        self.it += 1
        row["time"] = round(time.time() - self.t0, 2)
        self.log.append(row)
        return row

    def loss_keys(self, row: dict) -> tuple:
        return ("mse",)

    def watched(self) -> dict:
        return {"net": self.net, "bank": {"codes_": self.bank.codes_}}

    def state_dict(self) -> dict:
        return {"format": CKPT_FORMAT, "config": self.cfg.to_dict(), "data_id": self.data_id,
                "it": self.it, "net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "bank": self.bank.state_dict(), "generator": self.gen.get_state(), "log": self.log}

    def load_state_dict(self, sd: dict, path: str = "<checkpoint>") -> None:
        self.check_checkpoint(sd, path)
        self.load_parts(sd, path, {"net": self.net.load_state_dict, "opt": self.opt.load_state_dict,
                                   "bank": self.bank.load_state_dict,
                                   "generator": lambda s: self.gen.set_state(s.cpu())})

    def model(self, meta: dict | None = None) -> CodeNeRF:
        return CodeNeRF(self.cfg, self.net, self.bank.activated(), self.data.get("names", []),
                        self.log, dict(meta or {}))


def train_codenerf(cfg: CodeNeRFConfig, data_dir: str, out_dir: str, device=None,
                   resume: bool = True, progress: bool = True,
                   stop_after: int | None = None) -> CodeNeRF:
    """Train (or resume from out_dir/checkpoint.pt) a CodeNeRF on an SRN folder; writes
    checkpoint.pt atomically every cfg.ckpt_every iterations and model.pt at the end.
    stop_after: stop after that many iterations of this session (tests)."""
    device, t0 = pick_device(device), time.time()

    def save_model(tr: CodeNeRFTrainer) -> CodeNeRF:
        model = tr.model({"wall_s_last_session": round(time.time() - t0, 1), "device": str(device)})
        model.save(os.path.join(out_dir, "model.pt"))
        return model
    return train_baseline(CodeNeRFTrainer, cfg, data_dir, out_dir, device, resume, progress,
                          stop_after, save_model)


def model_key(cfg: CodeNeRFConfig) -> str:
    return f"cars-codenerf-{cfg.name}-{cfg.views_per_scene or 'all'}v-{cfg.iters}it-{config_digest(cfg)}"


def load_or_train(cfg: CodeNeRFConfig, device="cpu", progress: bool = True) -> CodeNeRF:
    """The CodeNeRF of cfg: shipped (assets/models/), cached, or trained now (resumably)."""
    key = model_key(cfg)
    path = find_model_file(key)
    if path:
        return CodeNeRF.load(path, device)
    print(f"[minissd] no shipped or cached {key}.pt: training it now (resumable, "
          f"{os.path.join(cache_dir(), 'runs', key)})", flush=True)
    data_dir = ensure_dataset("cars", "train", n_scenes=cfg.data_scenes, n_views=cfg.data_views,
                              resolution=cfg.image_res, seed=0)
    model = train_codenerf(cfg, data_dir, os.path.join(cache_dir(), "runs", key), device,
                           progress=progress)
    os.makedirs(os.path.join(cache_dir(), "models"), exist_ok=True)
    model.save(os.path.join(cache_dir(), "models", key + ".pt"))
    return model


# ------------------------------------------------------------------------ test time
def sample_pixels(image: torch.Tensor, n: int, generator=None):
    """n random pixel centres of an image (H, W, 3): uv (n, 2), colours (n, 3)."""
    H, W, _ = image.shape
    py, px = randint(H, (n,), generator, image.device), randint(W, (n,), generator, image.device)
    return torch.stack([px, py], -1).to(image.dtype) + 0.5, image[py, px]


def code_loss(model: CodeNeRF, codes: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
              uv: torch.Tensor, target: torch.Tensor, reg: float = 1e-4,
              generator=None) -> torch.Tensor:
    """Test-time objective of one object: MSE at pixels uv of a camera c2w (4, 4) (which
    may carry a gradient: unposed fitting) + reg (|z_s| + |z_t|). codes (1, 2, D)."""
    o, d = rays_at_pixels(c2w.expand(uv.shape[0], 4, 4), K, uv)
    mse = photometric_loss(model.net, codes, o[None], d[None], target[None], model.cfg,
                           generator)[0]
    return mse + reg * codes.norm(dim=-1).sum()


def halved_lr(lr: float, step: int, every: int = 50) -> float:
    """The official schedule: lr halved every `every` steps."""
    return lr * 0.5 ** (step // every)


def posed_step(model, codes, opt, step, c2w, K, image, rays=1024, lr=1e-2, reg=1e-4,
               generator=None) -> float:
    """One step of posed test-time fitting: fresh pixels, AdamW on the codes."""
    for g in opt.param_groups:
        g["lr"] = halved_lr(lr, step)
    uv, y = sample_pixels(image, rays, generator)
    opt.zero_grad(set_to_none=True)
    loss = code_loss(model, codes, c2w, K, uv, y, reg, generator)
    loss.backward()
    opt.step()
    return float(loss.detach())


def fit_codes_posed(model: CodeNeRF, image: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                    steps: int = 200, lr: float = 1e-2, reg: float = 1e-4, rays: int = 1024,
                    generator=None, callback=None) -> torch.Tensor:
    """Codes (1, 2, D) for one image (H, W, 3) seen from a KNOWN camera c2w (4, 4)."""
    codes = model.mean_code().clone().requires_grad_(True)
    opt = torch.optim.AdamW([codes], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            loss = posed_step(model, codes, opt, step, c2w, K, image, rays, lr, reg, generator)
            if callback is not None:
                callback(step, codes.detach(), loss)
    return codes.detach()


@torch.no_grad()
def render_codes(model: CodeNeRF, codes: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                 res: int) -> torch.Tensor:
    """One object's codes (1, 2, D) from cameras c2w (V, 4, 4) -> (V, res, res, 3) on the CPU."""
    K = K if K.dim() == 2 else K[None]
    out = render_image(model.field(codes.to(model.device)), c2w[None].to(model.device),
                       K.to(model.device), res, res, model.cfg.n_samples, near_min=model.cfg.near_min)
    return out["rgb"][0].clamp(0, 1).cpu()
