"""The pose table and 1-view reconstruction with the true vs the estimated camera, for a
CodeNeRF or an SSDNeRF model (the seed's CodeNeRF tables; SSDNeRF's Table 2 protocol).

For each test object: the input is view 64 of its 251-view spiral (scaled on shorter
spirals, data.cameras.scaled_view_ids), the score is PSNR / SSIM on every `eval_every`-th
other view rendered with the TRUE cameras of those views:

    true pose       the code(s) fitted with the input view's true camera
                    (CodeNeRF: codenerf_fit.fit_codes_posed; SSDNeRF: guided sampling + finetuning)
    estimated pose  pose.unposed -> camera c2w_est (no ground truth used), then the code(s)
                    fitted at c2w_est (SSDNeRF: guided sampling + finetuning re-run there;
                    CodeNeRF: the jointly optimised codes)

A wrong camera puts the object in a wrong frame, so pose errors cost PSNR on the novel
views -- as in CodeNeRF's own "estimated pose" row. Pose rates (fractions in [0, 1]):
rot_lt_5 / rot_lt_10 = share of rotation errors below 5 / 10 degrees, trans_lt_3 / trans_lt_5
= share of relative translation errors below 3 / 5 %.

    python -m minissd evaluate --task pose --ckpt MODEL.pt --data TEST_DIR --json pose.json
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from minissd.data.cameras import eval_view_ids, scaled_view_ids
from minissd.eval import metrics
from minissd.eval.evaluate import FINETUNE_SEED, _dataset
from minissd.related.codenerf_fit import fit_codes_posed, render_codes
from minissd.related.pose import PoseConfig, pose_errors, probe_mode, unposed
from minissd.testtime.generate import render_views
from minissd.testtime.reconstruct import reconstruct, select_views

RATES = {"rot_lt_5": ("rot_err_deg", 5.0), "rot_lt_10": ("rot_err_deg", 10.0),
         "trans_lt_3": ("trans_err_rel", 0.03), "trans_lt_5": ("trans_err_rel", 0.05)}


def _view_K(scene, i):
    K = scene["K"]
    return K[i] if K.dim() == 3 else K


def _render(model, code, c2w, K, res):
    if getattr(model, "kind", "") == "codenerf":
        return render_codes(model, code, c2w, K, res)
    return render_views(model, code, c2w, K, res=res)


def _fit(model, views: dict, seed: int):
    """Code(s) for views fitted with their given cameras."""
    gen = torch.Generator(device=views["images"].device).manual_seed(seed)
    if getattr(model, "kind", "") == "codenerf":
        return fit_codes_posed(model, views["images"][0], views["c2w"][0], _view_K(views, 0),
                               generator=gen)
    return reconstruct(model, views, generator=gen)


def evaluate_pose_scene(model, scene: dict, input_id: int, eval_ids, pcfg: PoseConfig,
                        seed: int = 0, true_pose: bool = True, figure: str | None = None) -> dict:
    """One object: pose errors, and PSNR/SSIM with the estimated (and the true) camera.
    figure: a PNG path for the panels (save_unposed_figure)."""
    dev = model.codes.device
    image, K = scene["images"][input_id].to(dev), _view_K(scene, input_id).to(dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    est = unposed(model, image, K, pcfg, generator=gen)
    rot, trans = pose_errors(est["c2w"].cpu(), scene["c2w"][input_id])
    ev = select_views(scene, eval_ids)
    res = scene["images"].shape[1]
    views_est = {"images": image[None], "c2w": est["c2w"][None], "K": K}
    code_est = (est["codes"] if getattr(model, "kind", "") == "codenerf"
                else _fit(model, views_est, FINETUNE_SEED + seed))
    pred = _render(model, code_est, ev["c2w"], ev["K"], res)
    row = {"scene": scene["name"], "input_id": input_id, "rot_err_deg": rot, "trans_err_rel": trans,
           "PSNR": float(metrics.psnr(pred, ev["images"]).mean()),
           "SSIM": float(metrics.ssim(pred, ev["images"]).mean()),
           "probe_losses": est["probe_losses"], "kept": est["kept"],
           "probe_rot_err_deg": [pose_errors(c.cpu(), scene["c2w"][input_id])[0]   # diagnostic
                                 for c in est["probe_c2w"]]}
    if true_pose:
        views = select_views(scene, [input_id])
        views = {k: v.to(dev) for k, v in views.items()}
        pred_t = _render(model, _fit(model, views, FINETUNE_SEED + seed), ev["c2w"], ev["K"], res)
        row.update(PSNR_true_pose=float(metrics.psnr(pred_t, ev["images"]).mean()),
                   SSIM_true_pose=float(metrics.ssim(pred_t, ev["images"]).mean()))
    if figure:
        at_est = _render(model, code_est, est["c2w"][None].cpu(), K.cpu(), res)[0]
        save_unposed_figure(image.cpu(), at_est, pred, ev["images"], row, figure)
    return row


def save_unposed_figure(image, at_est, preds, gts, row: dict, path: str, n_novel: int = 5) -> str:
    """PNG: the unposed input, the reconstruction rendered at the ESTIMATED camera blended
    over it, then novel views (true cameras) over their ground truth."""
    import os
    from matplotlib.figure import Figure
    k = min(n_novel, len(preds))
    fig = Figure(figsize=(1.6 * max(k, 2), 5))
    axes = fig.subplots(3, max(k, 2), squeeze=False)
    for a in axes.ravel():
        a.axis("off")
    axes[0, 0].imshow(image.clamp(0, 1).numpy())
    axes[0, 0].set_title("unposed input", fontsize=8)
    axes[0, 1].imshow((0.5 * at_est.clamp(0, 1) + 0.5 * image.clamp(0, 1)).numpy())
    axes[0, 1].set_title("render at est. pose\nover the input", fontsize=8)
    sel = [round(j * (len(preds) - 1) / max(1, k - 1)) for j in range(k)]
    for j, i in enumerate(sel):
        axes[1, j].imshow(preds[i].clamp(0, 1).numpy())
        axes[1, j].set_title("novel view", fontsize=8)
        axes[2, j].imshow(gts[i].clamp(0, 1).numpy())
        axes[2, j].set_title("truth", fontsize=8)
    fig.suptitle(f"{row['scene']}: rotation error {row['rot_err_deg']:.1f} deg, translation "
                 f"{100 * row['trans_err_rel']:.1f} %, PSNR {row['PSNR']:.2f} dB", fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def summarise(rows: list) -> dict:
    """Means, medians and the four rates over the objects' rows."""
    out = {}
    for name, (key, thr) in RATES.items():
        out[name] = float(np.mean([r[key] < thr for r in rows]))
    for key in ("rot_err_deg", "trans_err_rel"):
        out[f"median_{key}"] = float(np.median([r[key] for r in rows]))
    for key in ("PSNR", "SSIM", "PSNR_true_pose", "SSIM_true_pose"):
        if all(key in r for r in rows):
            out[key] = float(np.mean([r[key] for r in rows]))
    out["n_objects"] = len(rows)
    return out


def evaluate_pose(model, data, n_scenes: int | None = None, input_view: int = 64,
                  eval_every: int = 10, pcfg: PoseConfig | None = None, seed: int = 0,
                  true_pose: bool = True, progress: bool = True, scene_ids=None,
                  on_row=None) -> dict:
    """The pose table of `model` (CodeNeRF or SSDNeRF) on an SRN test folder (or dataset).
    Object i uses seed + i; on_row(partial result) runs after every object (long runs save
    as they go). Returns {"scenes": [rows], **summarise(rows), "protocol": ...}."""
    pcfg = pcfg or PoseConfig()
    ds = _dataset(data, model.cfg.image_res)
    ids = list(range(min(len(ds), n_scenes or len(ds)))) if scene_ids is None else list(scene_ids)
    rows = []
    bar = tqdm(ids, desc=f"pose ({getattr(model, 'kind', 'ssdnerf')})", disable=not progress)
    for i in bar:
        scene = ds[i]
        V = scene["images"].shape[0]
        inp = scaled_view_ids([input_view], V)[0]
        rows.append(evaluate_pose_scene(model, scene, inp, eval_view_ids(V, [inp], eval_every),
                                        pcfg, seed + i, true_pose))
        bar.set_postfix(rot=f"{rows[-1]['rot_err_deg']:.1f}", psnr=f"{rows[-1]['PSNR']:.2f}")
        if on_row is not None:
            on_row(_result(model, rows, input_view, eval_every, pcfg))
    return _result(model, rows, input_view, eval_every, pcfg)


def _result(model, rows, input_view, eval_every, pcfg) -> dict:
    kind = getattr(model, "kind", "ssdnerf")
    return {"task": "pose", "model": kind, "scenes": rows,
            **summarise(rows), "protocol": {"input_view": input_view, "eval_every": eval_every,
                                            "probe": probe_mode(pcfg, kind),
                                            "pose_config": {k: getattr(pcfg, k) for k in
                                                            pcfg.__dataclass_fields__}}}


def pose_table(results: dict) -> str:
    """Markdown: one row per labelled result of evaluate_pose."""
    head = ("| model | PSNR true pose | SSIM true pose | PSNR est. pose | SSIM est. pose | rot < 5 | "
            "rot < 10 | trans < 3% | trans < 5% | median rot (deg) | median trans |")
    lines = [head, "|" + "---|" * 11]
    for label, r in results.items():
        f = lambda k, s="{:.2f}": s.format(r[k]) if r.get(k) is not None else "n/a"  # noqa: E731
        lines.append(f"| {label} | {f('PSNR_true_pose')} | {f('SSIM_true_pose', '{:.3f}')} | "
                     f"{f('PSNR')} | {f('SSIM', '{:.3f}')} | "
                     + " | ".join(f"{100 * r[k]:.0f}%" for k in RATES)
                     + f" | {f('median_rot_err_deg', '{:.1f}')} | {f('median_trans_err_rel', '{:.3f}')} |")
    return "\n".join(lines)
