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

Departures: each test step uses `rays` random pixels of the image (official: all pixels in
chunks of 2048); the halving keeps AdamW's moments (official: a fresh optimiser).
"""
from __future__ import annotations

import json
import os
import time

import torch
from tqdm.auto import tqdm

from minissd.config import cache_dir, pick_device
from minissd.data.cameras import rays_at_pixels
from minissd.data.procedural import ensure_dataset
from minissd.errors import TrainingDiverged
from minissd.nerf.autodecoder import sample_rays
from minissd.nerf.render import render_image, render_rays
from minissd.related.codenerf import (
    CodeNeRF,
    CodeNeRFConfig,
    CodeNeRFNet,
    LatentBank,
    make_field,
)
from minissd.runtime import tick
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.model import data_id, load_training_data, model_dirs
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


def _state(net, opt, bank, gen, it, log, cfg, did) -> dict:
    return {"format": CKPT_FORMAT, "config": cfg.to_dict(), "data_id": did, "it": it,
            "net": net.state_dict(), "opt": opt.state_dict(), "bank": bank.state_dict(),
            "generator": gen.get_state(), "log": log}


def train_codenerf(cfg: CodeNeRFConfig, data_dir: str, out_dir: str, device=None,
                   resume: bool = True, progress: bool = True,
                   stop_after: int | None = None) -> CodeNeRF:
    """Train (or resume from out_dir/checkpoint.pt) a CodeNeRF on an SRN folder; writes
    checkpoint.pt atomically every cfg.ckpt_every iterations and model.pt at the end.
    stop_after: stop after that many iterations of this session (tests)."""
    device = pick_device(device)
    with ckpt.RunLock(out_dir):
        data = to_device(load_training_data(data_dir, cfg, device), device)
        did = data_id(data_dir, len(data["names"]))
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        net = CodeNeRFNet(cfg).to(device)
        bank = LatentBank(len(data["names"]), cfg.latent, device, generator=gen)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_net)
        it, log = 0, []
        path = os.path.join(out_dir, "checkpoint.pt")
        if resume and os.path.exists(path):
            sd = ckpt.load(path)
            if sd.get("format") != CKPT_FORMAT:
                raise ckpt.CheckpointError(f"{path}: not a CodeNeRF training checkpoint")
            ckpt.check_config(path, sd["config"], cfg.to_dict())
            if sd["data_id"] != did:
                raise ckpt.CheckpointError(f"{path}: trained on {sd['data_id']}, not {did}")
            net.load_state_dict(sd["net"]), opt.load_state_dict(sd["opt"])
            bank.load_state_dict(sd["bank"]), gen.set_state(sd["generator"])
            it, log = sd["it"], sd["log"]
            if progress:
                print(f"resumed {out_dir} at iteration {it}/{cfg.iters}")
        t0, start_it = time.time(), it
        bar = tqdm(range(it, cfg.iters), desc="CodeNeRF", disable=not progress)
        for it in bar:
            rec = train_step(net, opt, bank, data, cfg, it, gen)
            tick()                                # threads follow the free CPU (runtime.py)
            if not torch.isfinite(torch.tensor(rec["mse"])):
                raise TrainingDiverged(f"CodeNeRF loss is {rec['mse']} at iteration {it}; "
                                       f"{path} keeps the last good state")
            rec["time"] = round(time.time() - t0, 2)
            log.append(rec)
            bar.set_postfix(psnr=f"{rec['psnr']:.2f}")
            done = it + 1 == cfg.iters or (stop_after and it + 1 - start_it >= stop_after)
            if (it + 1) % cfg.ckpt_every == 0 or done:
                ckpt.save_atomic(path, _state(net, opt, bank, gen, it + 1, log, cfg, did))
                ckpt.write_atomic(os.path.join(out_dir, "log.jsonl"),
                                  lambda f: f.write("".join(json.dumps(r) + "\n" for r in log)),
                                  binary=False)
            if done:
                break
        model = CodeNeRF(cfg, net, bank.activated(), data.get("names", []), log,
                         {"wall_s_last_session": round(time.time() - t0, 1), "device": str(device)})
        model.save(os.path.join(out_dir, "model.pt"))
    return model


def model_key(cfg: CodeNeRFConfig) -> str:
    import hashlib
    digest = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return f"cars-codenerf-{cfg.name}-{cfg.views_per_scene or 'all'}v-{cfg.iters}it-{digest}"


def load_or_train(cfg: CodeNeRFConfig, device="cpu", progress: bool = True) -> CodeNeRF:
    """The CodeNeRF of cfg: shipped (assets/models/), cached, or trained now (resumably)."""
    key = model_key(cfg)
    for path in [os.path.join(d, key + ".pt") for d in model_dirs()] + [
            os.path.join(cache_dir(), "models", key + ".pt")]:
        if os.path.exists(path):
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
