"""Reconstruction from posed views: guided sampling (eq. 5, 6) then finetuning (eq. 7).

    x_T ~ N(0, I)
    x0  = DDIM( x0_hat' ),  x0_hat' = x0_hat - lambda_gd sigma^2/alpha w(t) grad_{x_t} L_rend   (5, 6)
    x*  = argmin_x lambda_rend L_rend(x) + lambda'_diff L_diff(x)   from x = x0                 (7)

then x* is rendered at the held-out views and compared with the ground truth (PSNR, SSIM
on 8-bit-quantised predictions, metrics.py). The paper's ablation (Table 3, SRN cars, 1 view):

    A0  single-stage model, finetune rend+diff    (the paper: PSNR 23.52)
    A1  two-stage model,    finetune rend+diff    (22.83)
    A2  single-stage model, finetune rend only    (23.13)
    A3  single-stage model, no finetuning         (23.07)

Input views follow the paper: view 64 (1 view), 64 and 104 (2 views) of a 251-view
spiral, placed at the same fraction of the way round on shorter spirals; 3 or more views
spread evenly over the spiral (data/cameras.py:input_view_ids, the one rule evaluate.py
uses too).

    python -m minissd reconstruct --ckpt MODEL.pt --data TEST_DIR --input-views 64 104 --out DIR

Every test-time setting comes from the model's `TestConfig` (`model.test`; config.py):
the guidance scale, the DDIM steps (the paper uses 75 to reconstruct vs 50 to generate,
so 0 means 1.5 x cfg.ddim_steps), the observed rays rendered per guidance step (0 means
4 x cfg.rays_per_scene: every pixel of a 32 px view in smoke, half of a 64 px view in laptop) and the
finetuning schedule. Pass `tcfg=` to override it for one call.
"""
from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from minissd.config import TestConfig
from minissd.data.cameras import eval_view_ids, input_view_ids
from minissd.eval.metrics import psnr, ssim
from minissd.testtime.finetune import finetune as finetune_codes
from minissd.testtime.generate import noise, render_views
from minissd.testtime.guidance import guided_sample, views_to_rays
from minissd.utils import evenly_spaced

ABLATIONS = {"A0": ("single-stage", "rend+diff"), "A1": ("two-stage", "rend+diff"),
             "A2": ("single-stage", "rend"), "A3": ("single-stage", "none")}


def recon_steps(cfg, tcfg: TestConfig) -> int:
    """DDIM steps to reconstruct: tcfg.recon_steps, or 1.5 x cfg.ddim_steps (75 vs 50)."""
    return tcfg.recon_steps or max(1, round(1.5 * cfg.ddim_steps))


def guide_rays(cfg, tcfg: TestConfig) -> int:
    """Rays per guidance step: tcfg.guide_rays, or 4 x cfg.rays_per_scene."""
    return tcfg.guide_rays or 4 * cfg.rays_per_scene


def observed_rays(model, views: dict):
    """Every pixel ray of the input views, on the model's device: (origins, dirs, target),
    each (1, V*H*W, 3) (guidance.views_to_rays)."""
    dev = model.codes.device
    return tuple(r.to(dev) for r in views_to_rays(views["images"].to(dev), views["c2w"].to(dev),
                                                  torch.as_tensor(views["K"]).to(dev)))


def guided_code(model, views: dict, *, tcfg: TestConfig | None = None,
                lambda_gd: float | None = None, generator: torch.Generator | None = None,
                callback=None, progress: bool = False):
    """Guided DDIM only (eq. 5, 6): (the code (1, 3, C, R, R) before finetuning, the
    observed rays)."""
    cfg = model.cfg
    tcfg = tcfg or model.test
    V = views["images"].shape[0]
    lambda_gd = tcfg.lambda_gd if lambda_gd is None else lambda_gd
    rays = observed_rays(model, views)
    x_T = noise(model, 1, generator)                                    # (1, 3, C, R, R)
    x0 = guided_sample(model.prior, model.decoder, rays, x_T, lambda_gd=lambda_gd,
                       steps=recon_steps(cfg, tcfg), n_samples=cfg.n_samples, n_views=V,
                       c_rend=1.0, rays_per_step=guide_rays(cfg, tcfg), generator=generator,
                       callback=callback, progress=progress, near_min=cfg.near_min)
    return x0, rays                                                     # (1, 3, C, R, R)


def reconstruct(model, views: dict, finetune: str = "rend+diff", *,
                tcfg: TestConfig | None = None, lambda_gd: float | None = None,
                generator: torch.Generator | None = None, callback=None,
                finetune_callback=None, progress: bool = False,
                start: torch.Tensor | None = None) -> torch.Tensor:
    """A code (3, C, R, R) for the object seen in views = {"images": (V, H, W, 3),
    "c2w": (V, 4, 4), "K": (V, 3, 3) or (3, 3)} (normalised coordinates).

    tcfg: test-time settings (default model.test); lambda_gd overrides its guidance scale;
    callback(i, t, x_t, x0_hat) runs after every DDIM step (trajectories);
    finetune_callback(step, x, losses) after every finetuning step. start: a guided code
    (1, 3, C, R, R) from `guided_code` to finetune instead of sampling again (ablations
    that differ only in finetuning share it).
    """
    tcfg = tcfg or model.test
    V = views["images"].shape[0]
    if start is None:
        x, rays = guided_code(model, views, tcfg=tcfg, lambda_gd=lambda_gd, generator=generator,
                              callback=callback, progress=progress)
    else:
        x, rays = start.to(model.codes.device), observed_rays(model, views)
    x = finetune_codes(model.decoder, model.prior, x, rays, model.cfg, V, mode=finetune,
                       tcfg=tcfg, generator=generator, callback=finetune_callback,
                       progress=progress)
    return x[0]


def select_views(scene: dict, ids) -> dict:
    ids = torch.as_tensor(list(ids), dtype=torch.long)
    K = scene["K"]
    return {"images": scene["images"][ids], "c2w": scene["c2w"][ids],
            "K": K[ids] if K.dim() == 3 else K}


def reconstruct_scene(model, scene: dict, input_ids, eval_ids=None, max_eval: int | None = None,
                      **kwargs) -> dict:
    """Reconstruct `scene` (an SRNDataset item) from its views input_ids and evaluate on
    eval_ids (default: every other view, at most max_eval of them, evenly spread).
    Returns code, inputs, preds, gts (V, H, W, 3) and per-view psnr, ssim (tensors)."""
    if eval_ids is None:
        eval_ids = eval_view_ids(scene["images"].shape[0], input_ids, at_most=max_eval)
    code = reconstruct(model, select_views(scene, input_ids), **kwargs)
    ev = select_views(scene, eval_ids)
    H = scene["images"].shape[1]
    preds = render_views(model, code, ev["c2w"], ev["K"], res=H)
    gts = ev["images"].cpu()
    return {"code": code, "inputs": scene["images"][list(input_ids)].cpu(), "preds": preds,
            "gts": gts, "psnr": psnr(preds, gts), "ssim": ssim(preds, gts),
            "input_ids": list(input_ids), "eval_ids": list(eval_ids)}


def sparse_to_dense(model, scene: dict, view_counts=(1, 2, 4, 8, 16), max_eval: int | None = 8,
                    progress: bool = True, **kwargs) -> dict:
    """{count: {"psnr": mean dB, "ssim": mean}} reconstructing from 1, 2, 4, ... views
    (each with its own finetuning schedule) and testing on the same held-out views."""
    n = scene["images"].shape[0]
    counts = [c for c in view_counts if c < n]
    used = set().union(*(input_view_ids(n, c) for c in counts))
    held = eval_view_ids(n, used, at_most=max_eval)
    out = {}
    for c in tqdm(counts, desc="sparse to dense", disable=not progress):
        r = reconstruct_scene(model, scene, input_view_ids(n, c), eval_ids=held, **kwargs)
        out[c] = {"psnr": float(r["psnr"].mean()), "ssim": float(r["ssim"].mean())}
    return out


def plot_sparse_to_dense(results: dict, ax=None, label: str | None = None):
    """PSNR (left axis) and SSIM (right axis) against the number of input views."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3))
    counts = sorted(results)
    ax.plot(counts, [results[c]["psnr"] for c in counts], "o-", label=label or "PSNR")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("input views")
    ax.set_ylabel("PSNR (dB)")
    ax2 = ax.twinx()
    ax2.plot(counts, [results[c]["ssim"] for c in counts], "s--", color="tab:orange")
    ax2.set_ylabel("SSIM", color="tab:orange")
    return ax


def save_figure(result: dict, path: str, n_novel: int = 6, title: str = "") -> str:
    """PNG: the input views, then predicted novel views over their ground truth."""
    from matplotlib.figure import Figure
    k = min(n_novel, len(result["preds"]))
    cols = max(k, len(result["inputs"]))
    fig = Figure(figsize=(1.6 * cols, 5))
    axes = fig.subplots(3, cols, squeeze=False)
    for a in axes.ravel():
        a.axis("off")
    for j, img in enumerate(result["inputs"][:cols]):
        axes[0, j].imshow(img.clamp(0, 1).numpy())
        axes[0, j].set_title(f"input {result['input_ids'][j]}", fontsize=8)
    sel = evenly_spaced(len(result["preds"]), k)
    for j, i in enumerate(sel):
        axes[1, j].imshow(result["preds"][i].numpy())
        axes[1, j].set_title(f"pred {float(result['psnr'][i]):.1f} dB", fontsize=8)
        axes[2, j].imshow(result["gts"][i].numpy())
        axes[2, j].set_title(f"truth (view {result['eval_ids'][i]})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
