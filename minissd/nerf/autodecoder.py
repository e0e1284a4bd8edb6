"""Auto-decoding many scenes with one shared decoder: the rendering loss of eq. (1)
(official code: lib/models/autodecoders/base_nerf.py `BaseNeRF.loss`).

Every training scene i has its own code x_i (triplane.CodeBank) and all scenes share the
decoder psi. Codes and decoder are fitted jointly by minimising, per scene,

    L_rend(x_i, psi) = lambda_rend * 1/|R| sum_{r in R} 1/2 || C(r; x_i, psi) - y_r ||^2
                       + c_reg * mean(x_i^2),
    lambda_rend(N_v) = c_rend * (1 - exp(-0.1 N_v)),

The paper's eq. (1) SUMS the squared error over all pixels of the N_v views and weighs
the sum by c (1 - exp(-0.1 N_v)) / N_v; here the error is a MEAN over rays, which already
divides by the number of pixels, so the 1/N_v is gone. (1 - exp(-0.1 N_v)) is the paper's
per-view form; the official code (MSE x 20 x 3 x weight, i.e. c_rend = 40 on our 0.5 *
sum-over-RGB error) counts pixels instead, 1 - exp(-0.1 N_v H W / 128^2), which equals it
only at 128x128 (at 64x64 it would be 1 - exp(-0.025 N_v)). Fewer views therefore weigh
rendering LESS and leave more to the prior.

with R random rays drawn across all N_v views of the scene, C(r; x, psi) the volume
rendering of eq. 1 (render.py) and y_r the pixel colour. `autodecoder_iteration` is the
one auto-decoder loop of minissd: `train_autodecoder` (notebooks 01-02), stage 1 of the
two-stage baseline and lines 6-13 of Algorithm 1 (ssd/train.py) all run it, with the
regulariser, code initialisation and occupancy schedule of a `Recipe` (recipes.py, which also
holds the regularisers and the running mean code): STAGE1_RECIPE holds the official stage-1
values (TV^1.5, mean-code init, grids refreshed every outer iteration).

x in the regulariser is the activated code 2 tanh(code_).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from minissd.data.cameras import rays_at_pixels
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.occupancy import OccupancyGrid
# re-exported: the recipe names were defined here before recipes.py split them out
from minissd.nerf.recipes import (  # noqa: F401
    MEAN_CODE_MOMENTUM,
    NOTEBOOK_RECIPE,
    SINGLE_STAGE_RECIPE,
    STAGE1_RECIPE,
    TORCH_NGP_OCC_EVERY,
    Recipe,
    code_regulariser,
    init_from_mean,
    refresh_due,
    tv_regulariser,
    update_mean_code,
)
from minissd.nerf.render import render_image, render_rays
from minissd.nerf.triplane import CodeBank, code_activation, make_field
from minissd.runtime import tick
from minissd.utils import randint, to_device


class RayBatch(NamedTuple):
    origins: torch.Tensor    # (B, N, 3)
    dirs: torch.Tensor       # (B, N, 3) unit length
    target: torch.Tensor     # (B, N, 3) pixel colours in [0, 1]


def sample_rays(scene_data: dict, idx, n_rays: int, generator: torch.Generator | None = None) -> RayBatch:
    """n_rays random pixels per scene, drawn uniformly across all views of each scene idx (B,).

    scene_data: {"images": (N, V, H, W, 3), "c2w": (N, V, 4, 4), "K": (N, V, 3, 3)}.
    Rays go through pixel centres, like render_image.
    """
    images = scene_data["images"]
    dev = images.device
    _, V, H, W, _ = images.shape
    idx = torch.as_tensor(idx, device=dev).long().reshape(-1, 1)        # (B, 1)
    B = idx.shape[0]
    v, py, px = (randint(n, (B, n_rays), generator, dev) for n in (V, H, W))
    target = images[idx, v, py, px]                                     # (B, n, 3)
    c2w = scene_data["c2w"][idx, v].reshape(-1, 4, 4)
    K = scene_data["K"][idx, v].reshape(-1, 3, 3)
    uv = torch.stack([px, py], dim=-1).reshape(-1, 2).to(images.dtype) + 0.5
    o, d = rays_at_pixels(c2w, K, uv)
    return RayBatch(o.reshape(B, n_rays, 3), d.reshape(B, n_rays, 3), target)


def lambda_rend(c_rend: float, n_views: int) -> float:
    """c_rend * (1 - exp(-0.1 N_v)), the weight of a per-ray MEAN error (eq. 1's sum over
    N_v views' pixels carries an extra 1/N_v that the mean already contains): fewer views,
    less weight, so a 1-view finetune leans on the prior about 10x more than 50 views."""
    return c_rend * (1.0 - math.exp(-0.1 * n_views))


def rendering_loss(decoder, x: torch.Tensor, origins, dirs, target, cfg, n_views: int,
                   generator: torch.Generator | None = None, occupancy=None,
                   stats: dict | None = None, reg: str = "l2",
                   c_rend: float | None = None) -> torch.Tensor:
    """Per-scene rendering loss (B,) of activated codes x (B, 3, C, R, R) on a RayBatch.

    lambda_rend * 0.5 * ||y - y_hat||^2 (sum over RGB, mean over rays) + the code
    regulariser `reg` (code_regulariser: "l2" code_reg * mean(x^2), or "tv").
    Stratified samples (cfg.n_samples). If `stats` is a dict, stats["mse"] gets the (B,)
    per-channel MSE (detached) for logging.
    """
    out = render_rays(make_field(decoder, x), origins, dirs, cfg.n_samples,
                      near_min=cfg.near_min, stratified=True, generator=generator,
                      occupancy=occupancy)
    sq = (out["rgb"] - target).pow(2)                                   # (B, N, 3)
    c = cfg.c_rend if c_rend is None else c_rend      # finetuning passes its own constant
    loss = lambda_rend(c, n_views) * 0.5 * sq.sum(-1).mean(-1)
    loss = loss + code_regulariser(x, cfg, reg)
    if stats is not None:
        stats["mse"] = sq.detach().mean(dim=(1, 2))
    return loss


def backward_rendering_loss(decoder, code_: torch.Tensor, rays: RayBatch, cfg, n_views: int, idx,
                            occupancy=None, generator: torch.Generator | None = None,
                            scale: float = 1.0, max_rays_per_pass: int = 2048,
                            stats: dict | None = None, reg: str = "l2",
                            c_rend: float | None = None) -> torch.Tensor:
    """Backpropagate scale * sum_i rendering_loss_i for pre-activation codes code_ (B, 3, C, R, R)
    (a leaf requiring grad) of scenes idx (B,), in passes of at most max_rays_per_pass rays.

    Gradients accumulate into code_.grad and the decoder's .grad: the same update as one
    big pass, with activations small enough for CPU caches (about 2x faster per sample on
    2 cores) and GPU memory. occupancy: the OccupancyGrid of ALL scenes (indexed by idx)
    or None. Returns the per-scene losses (B,), detached; stats["mse"] as rendering_loss.
    """
    B = code_.shape[0]
    per_pass = max(1, max_rays_per_pass // rays.origins.shape[1])      # scenes per pass
    losses, mses = [], []
    for s in range(0, B, per_pass):
        sl = slice(s, s + per_pass)
        occ = occupancy[idx[sl]] if occupancy is not None else None
        loss = rendering_loss(decoder, code_activation(code_[sl]), rays.origins[sl], rays.dirs[sl],
                              rays.target[sl], cfg, n_views, generator=generator, occupancy=occ,
                              stats=stats, reg=reg, c_rend=c_rend)
        (loss.sum() * scale).backward()
        losses.append(loss.detach())
        if stats is not None:
            mses.append(stats["mse"])
    if stats is not None:
        stats["mse"] = torch.cat(mses)
    return torch.cat(losses)


def code_step(bank: CodeBank, idx, decoder, rays: RayBatch, cfg, n_views: int, lr: float, *,
              prior_grad: torch.Tensor | None = None, occupancy=None,
              generator: torch.Generator | None = None, scale: float = 1.0, reg: str = "l2",
              c_rend: float | None = None, max_rays_per_pass: int = 2048,
              stats: dict | None = None) -> torch.Tensor:
    """One code update, Algorithm 1 lines 7-10, for the scenes idx (B,) of `bank`:

        g_x = grad_x lambda_rend L_rend(x; rays) + g_x^diff,     x <- x - Adam(g_x)

    with the rendering gradient of the given fresh rays (summed over scenes, times
    `scale`) and `prior_grad` (B, 3, C, R, R) the cached prior gradient (None: rendering
    only). Every inner loop of minissd is this one step: auto-decoding (no prior),
    single-stage training (Trainer.rendering_step) and test-time finetuning (eq. 7), as
    the official code's one `inverse_code` serves training and test time. The rendering
    gradient also accumulates into the decoder's .grad: the caller steps the decoder or
    not. Returns the per-scene rendering losses (B,), detached.
    """
    code_ = bank.get(idx, decoder_device(decoder))                      # (B, 3, C, R, R) leaf
    losses = backward_rendering_loss(decoder, code_, rays, cfg, n_views, idx, occupancy, generator,
                                     scale=scale, max_rays_per_pass=max_rays_per_pass,
                                     stats=stats, reg=reg, c_rend=c_rend)
    g = code_.grad if prior_grad is None else code_.grad + prior_grad   # line 9
    bank.adam_step(idx, g, lr)                                          # line 10
    return losses


def decoder_device(decoder) -> torch.device:
    return next(decoder.parameters()).device


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of images in [0, 1] from their mean squared error (metrics.psnr takes images)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def heldout_psnr(decoder, x: torch.Tensor, scene_data: dict, cfg, occupancy=None) -> torch.Tensor:
    """Mean PSNR (dB) over all views of scene_data for each scene: x (B,...) -> (B,).

    scene_data holds the held-out views of the same B scenes (same order as x).
    """
    images = scene_data["images"].to(x.device)                          # (B, V, H, W, 3)
    H, W = images.shape[2:4]
    pred = render_image(make_field(decoder, x), scene_data["c2w"].to(x.device),
                        scene_data["K"].to(x.device), H, W, cfg.n_samples, chunk=8192,
                        occupancy=occupancy, near_min=cfg.near_min)["rgb"]   # (B, V, H, W, 3)
    mse = (pred.clamp(0, 1) - images).pow(2).mean(dim=(2, 3, 4))         # (B, V)
    return psnr_from_mse(mse).mean(dim=1)


def inner_step(bank: CodeBank, idx, decoder, opt_dec, data: dict, cfg, n_views: int,
               recipe: Recipe = NOTEBOOK_RECIPE, *, prior_grad=None, step_decoder: bool = True,
               generator=None, max_rays_per_pass: int = 2048, stats: dict | None = None,
               world: int = 1):
    """One inner step (Algorithm 1 lines 7-13): fresh rays, code_step (rendering gradient +
    prior_grad), and a decoder step when `step_decoder` and opt_dec is not None. With
    recipe.mean_loss the loss is the mean over the global batch of len(idx) x `world`
    scenes (world: torchrun ranks each holding len(idx) of them).
    Returns the per-scene rendering losses (B,), detached."""
    rays = sample_rays(data, idx, cfg.rays_per_scene, generator)            # line 7
    decoder.zero_grad(set_to_none=True)
    losses = code_step(bank, idx, decoder, rays, cfg, n_views, cfg.lr_code, prior_grad=prior_grad,
                       occupancy=bank.occupancy, generator=generator,
                       scale=1.0 / (len(idx) * world) if recipe.mean_loss else 1.0, reg=recipe.reg,
                       max_rays_per_pass=max_rays_per_pass, stats=stats)      # lines 8-10
    if step_decoder and opt_dec is not None:                                # lines 11-13
        opt_dec.step()
    decoder.zero_grad(set_to_none=True)
    return losses


def autodecoder_iteration(bank: CodeBank, idx, decoder, opt_dec, data: dict, cfg, it: int,
                          k_in: int = 1, recipe: Recipe = NOTEBOOK_RECIPE, *, prior_grad=None,
                          mean_code=None, occ_warmup: int | None = None, generator=None,
                          max_rays_per_pass: int = 2048, stats: dict | None = None,
                          world: int = 1, average=None):
    """One outer iteration of the auto-decoder on the scenes idx (B,), the loop shared by
    train_autodecoder, stage 1 of the two-stage baseline and (with the cached prior
    gradient prior_grad) lines 6-13 of Algorithm 1:

        [init codes from the mean]; [refresh grids]; K_in x inner_step (decoder steps on
        the last); [update the mean code]; [refresh grids]

    as `recipe` says. bank.occupancy (None: no skipping) holds the grids of all scenes.
    stats["t_occ"], stats["t_rend"] get the seconds spent on the grids and the inner steps.
    world and average: torchrun's ranks sharing the batch (inner_step, update_mean_code).
    Returns the last inner step's per-scene losses (B,)."""
    stats = {} if stats is None else stats
    n_views = data["images"].shape[1]
    occ_warmup = cfg.occ_warmup if occ_warmup is None else occ_warmup
    refresh = bank.occupancy is not None and refresh_due(it, occ_warmup, recipe)
    if recipe.init == "mean":
        init_from_mean(bank, idx, mean_code)
    t0 = time.perf_counter()
    if refresh and recipe.occ_first:
        bank.refresh_occupancy(decoder, cfg, idx, len(idx), generator, recipe.occ_jitter)
    t1 = time.perf_counter()
    for k in range(k_in):
        losses = inner_step(bank, idx, decoder, opt_dec, data, cfg, n_views, recipe,
                            prior_grad=prior_grad, step_decoder=(k == k_in - 1), generator=generator,
                            max_rays_per_pass=max_rays_per_pass, stats=stats, world=world)
    if recipe.init == "mean":
        update_mean_code(bank, idx, mean_code, average=average)
    t2 = time.perf_counter()
    if refresh and not recipe.occ_first:
        bank.refresh_occupancy(decoder, cfg, idx, len(idx), generator, recipe.occ_jitter)
    stats["t_occ"], stats["t_rend"] = t1 - t0 + time.perf_counter() - t2, t2 - t1
    return losses


def train_autodecoder(cfg, scene_data: dict, iters: int, device="cpu", bank: CodeBank | None = None,
                      decoder: TriplaneDecoder | None = None, use_occupancy: bool = True,
                      occ_every: int = TORCH_NGP_OCC_EVERY, occ_warmup: int | None = None,
                      progress: bool = True, log_every: int = 10, callback=None,
                      max_seconds: float | None = None, train_decoder: bool = True,
                      max_rays_per_pass: int = 2048, recipe: Recipe | None = None):
    """Fit one code per scene and the shared decoder by Adam on the rendering loss.

    scene_data: SRNDataset.stack() dict; iters: iterations of a batch of
    cfg.scenes_per_batch scenes x cfg.rays_per_scene rays, each one `autodecoder_iteration`
    with K_in = 1 and `recipe` (default NOTEBOOK_RECIPE with the given occ_every;
    STAGE1_RECIPE is the official stage 1). callback(it, bank, decoder) is
    called every log_every iterations (e.g. to render a held-out view). max_seconds stops
    early once that much wall-clock time has passed (benchmarks with a time budget).
    Occupancy grids stay full for occ_warmup (default cfg.occ_warmup) iterations
    (use_occupancy=False: no skipping).
    train_decoder=False keeps psi fixed and fits only the codes (new scenes, known decoder).
    The batch is rendered in passes of at most max_rays_per_pass rays (see
    backward_rendering_loss).
    Returns (bank, decoder, log); bank.occupancy holds the scenes' OccupancyGrid (or None).
    """
    recipe = replace(NOTEBOOK_RECIPE, occ_every=occ_every) if recipe is None else recipe
    device = torch.device(device)
    data = to_device(scene_data, device)
    N, V = data["images"].shape[:2]
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if bank is None:
        bank = CodeBank(N, cfg.code_ch, cfg.code_res, device, generator=gen)
    if decoder is None:
        decoder = TriplaneDecoder.from_config(cfg)
    decoder = decoder.to(device).train()
    decoder.requires_grad_(train_decoder)
    opt = torch.optim.Adam(decoder.parameters(), lr=cfg.lr_decoder) if train_decoder else None
    if use_occupancy and bank.occupancy is None:
        bank.occupancy = OccupancyGrid.full(N, cfg.occ_grid_res, device)
    if not use_occupancy:
        bank.occupancy = None
    mean_code = torch.zeros(bank.shape[1:], device=bank.device) if recipe.init == "mean" else None
    B = min(cfg.scenes_per_batch, N)
    log, stats = [], {}
    start = time.time()
    bar = tqdm(range(iters), desc="auto-decoder", disable=not progress)
    for it in bar:
        idx = torch.randperm(N, generator=gen)[:B].to(device)
        for g in (opt.param_groups if opt is not None else []):       # linear warm-up
            g["lr"] = cfg.lr_decoder * min(1.0, (it + 1) / max(1, cfg.warmup))
        loss = autodecoder_iteration(bank, idx, decoder, opt, data, cfg, it, 1, recipe,
                                     mean_code=mean_code, occ_warmup=occ_warmup, generator=gen,
                                     max_rays_per_pass=max_rays_per_pass, stats=stats)
        tick()                                  # threads follow the free CPU (runtime.py)
        out_of_time = max_seconds is not None and time.time() - start > max_seconds
        if it % log_every == 0 or it == iters - 1 or out_of_time:
            rec = {"iter": it, "time": time.time() - start, "loss": float(loss.mean()),
                   "mse": float(stats["mse"].mean()), "psnr": float(psnr_from_mse(stats["mse"]).mean())}
            if bank.occupancy is not None:
                rec["occupied"] = float(bank.occupancy.fraction()[idx.to(bank.occupancy.grid.device)].mean())
            log.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.2e}", psnr=f"{rec['psnr']:.2f}")
            if callback is not None:
                callback(it, bank, decoder)
        if out_of_time:
            break
    decoder.requires_grad_(True).eval()
    if bank.occupancy is not None:                                       # fresh grids for rendering
        bank.refresh_occupancy(decoder, cfg, batch=B, generator=gen, n_jitter=recipe.occ_jitter)
    return bank, decoder, log
