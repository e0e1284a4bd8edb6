"""The paper's evaluation protocol (Tables 1-3), on any SRN-format test split.
Official code: lib/models/autodecoders/base_nerf.py `eval_and_viz`, lib/core/evaluation/.

Reconstruction (Table 2, ablation Table 3): each test object is reconstructed from its
input view(s) (guided sampling eq. 5-6 + finetuning eq. 7, reconstruct.py), rendered at
the other views and compared with the ground truth:
    PSNR, SSIM, LPIPS per image (8-bit-quantised predictions), averaged over all images;
    FID between all predicted novel views and all ground-truth novel views.
SRN test objects have 251 spiral views; the input is view 64 (1 view) or 64 and 104
(2 views) and the other views are evaluated. Our procedural test splits have fewer
views, so a paper index v becomes the nearest view at the same place on the spiral,
floor(v n / 251 + 1/2) for a scene of n < 251 views (64 -> 6 of 24 views): the one rule
data/cameras.py:scaled_view_ids, which reconstruct.py's input views use too. `eval_every`
keeps every k-th non-input view (1 = all of them, the paper) to make CPU runs short.

Generation: n codes x ~ DDIM(x_T), x_T ~ N(0, I) (generate.sample_codes), then
    COV, MMD: Chamfer distance between surface points of each sample and the true surface
        points of every test object (geometry.coverage_mmd, PointFlow / DiffRF protocol);
    FID, KID: renders of the samples vs the test images (Inception net; KID x 1e3).
Surface points of a field are its density shell (geometry.points_from_density). The
density scale of a decoder is arbitrary, so the threshold is CALIBRATED: on a few
training scenes, the threshold (from a log grid) whose extracted points are closest in
Chamfer distance to the scenes' true surface points. (The official code meshes at
density 10, the fallback when no training data is given.)

Metrics that need pretrained weights (LPIPS: VGG16, FID/KID: Inception) are None and
printed "n/a" when the weights are not on disk: never a number from random weights.

    python -m minissd evaluate --ckpt M.pt --data TEST --task recon --input-views 64 --json r.json
    python -m minissd evaluate --ckpt M.pt --ckpt2 TWO.pt --data TEST --ablation A0 A1 A2 A3 --json a.json
    python -m minissd evaluate --ckpt M.pt --data TEST --task generation --train-data TRAIN --json g.json
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from minissd.data.cameras import eval_view_ids, scaled_view_ids
from minissd.data.srn import SRNDataset
from minissd.eval import fid, geometry, metrics
from minissd.ssd.checkpoint import write_atomic
from minissd.testtime.generate import render_views, sample_codes
from minissd.testtime.reconstruct import ABLATIONS, guided_code, reconstruct_scene, select_views

FINETUNE_SEED = 1_000_003      # finetuning's generator: seed + i + FINETUNE_SEED
RECON_COLUMNS = ("PSNR", "SSIM", "LPIPS", "FID")
GEN_COLUMNS = ("COV", "MMD", "IMG_COV", "IMG_MMD", "IMG_PREC", "FID", "KID")
# how a table shows each value: COV in %, MMD (squared-distance Chamfer) and KID x 1e3
_SHOW = {"PSNR": (1, "{:.2f}"), "SSIM": (1, "{:.3f}"), "LPIPS": (1, "{:.3f}"), "FID": (1, "{:.2f}"),
         "COV": (100, "{:.1f}"), "MMD": (1e3, "{:.3f}"), "KID": (1e3, "{:.2f}"),
         "IMG_COV": (100, "{:.1f}"), "IMG_MMD": (1, "{:.2f}"), "IMG_PREC": (1, "{:.2f}")}
HEADERS = {"COV": "COV (%)", "MMD": "MMD (x1e3)", "KID": "KID (x1e3)",
           "IMG_COV": "image COV (%)", "IMG_MMD": "image MMD (dB)", "IMG_PREC": "image PREC (dB)"}

# The paper's numbers (its Tables 1-3, as labelled below). None = not reported.
PAPER_RECON = {  # Table 2, 1-stage SSDNeRF (SSIM printed to 2 decimals there)
    "paper cars 1-view": {"PSNR": 23.52, "SSIM": 0.91, "LPIPS": 0.078, "FID": 16.39},
    "paper cars 2-view": {"PSNR": 26.49, "SSIM": 0.94, "LPIPS": 0.054, "FID": 10.66},
    "paper chairs 1-view": {"PSNR": 24.35, "SSIM": 0.93, "LPIPS": 0.067, "FID": 10.13}}
PAPER_ABLATION = {  # Table 3, SRN cars, 1 view
    "A0": {"PSNR": 23.52, "SSIM": 0.913, "LPIPS": 0.078, "FID": 16.39},
    "A1": {"PSNR": 22.83, "SSIM": 0.906, "LPIPS": 0.090, "FID": 20.97},
    "A2": {"PSNR": 23.13, "SSIM": 0.907, "LPIPS": 0.088, "FID": 27.93},
    "A3": {"PSNR": 23.07, "SSIM": 0.905, "LPIPS": 0.092, "FID": 30.95}}
PAPER_GENERATION = {  # Table 1 (KID stored unscaled); COV/MMD: DiffRF's table, not SSDNeRF's
    "paper cars 1-stage": {"COV": None, "MMD": None, "FID": 11.08, "KID": 3.47e-3},
    "paper cars 2-stage": {"COV": None, "MMD": None, "FID": 16.33, "KID": 6.38e-3},
    "paper tables 1-stage": {"COV": None, "MMD": None, "FID": 14.27, "KID": 4.08e-3},
    "DiffRF tables": {"COV": 0.6154, "MMD": 7.610e-3, "FID": 27.06, "KID": 10.03e-3}}


def _dataset(data, res):
    if isinstance(data, str):
        if not os.path.isdir(data):
            raise FileNotFoundError(f"evaluate: test folder {data} does not exist")
        return SRNDataset(data, resolution=res)
    return data


def _fid_kid(pred, real, kid=False):
    """FID (and KID) of two image sets, or None when Inception weights are absent / too few."""
    if len(pred) < 2 or len(real) < 2:
        return (None, None) if kid else None
    fa = fid.inception_features(pred)
    fb = None if fa is None else fid.inception_features(real)
    fd = None if fb is None else fid.frechet_distance(fa, fb)
    if not kid:
        return fd
    return fd, (None if fb is None else fid.kernel_inception_distance(
        fa, fb, subsets=fid.KID_SUBSETS, subset_size=fid.KID_SUBSET_SIZE)[0])


# ----------------------------------------------------------------------------- reconstruction
def evaluate_reconstruction(model, data, input_views=(64,), finetune: str = "rend+diff",
                            n_scenes: int | None = None, eval_every: int = 1, *,
                            tcfg=None, lambda_gd: float | None = None, seed: int = 0,
                            with_fid: bool = True, progress: bool = True,
                            label: str = "minissd", guided: dict | None = None,
                            scene_ids=None) -> dict:
    """Reconstruct the first n_scenes test objects (or `scene_ids`) from `input_views`
    (paper indices of 251) and score the other views. Returns {"PSNR", "SSIM", "LPIPS",
    "FID" (means or None), "scenes": [per-scene dicts], ...}. Scene i uses the generator
    seed `seed + i` for guided sampling (and seed + i + FINETUNE_SEED for finetuning). tcfg: test-time settings (default model.test; lambda_gd overrides its
    guidance scale). `guided`: a dict that caches each scene's guided sample, so rows
    that differ only in finetuning (A0, A2, A3) start from the same code and sample once."""
    tcfg = tcfg or model.test
    ds = _dataset(data, model.cfg.image_res)
    n = min(len(ds), n_scenes or len(ds))
    scene_ids = list(range(n)) if scene_ids is None else list(scene_ids)
    rows, preds, gts, per_image = [], [], [], {"PSNR": [], "SSIM": [], "LPIPS": []}
    for i in tqdm(scene_ids, desc=f"evaluate {label}", disable=not progress):
        scene = ds[i]
        V = scene["images"].shape[0]
        ids = scaled_view_ids(input_views, V)
        # the guided sample depends only on the guidance settings; finetuning draws its rays
        # from a generator of its own, so a cached sample gives the same result as a fresh one
        key = (id(model), i, tuple(ids), seed, lambda_gd, tcfg.lambda_gd, tcfg.recon_steps,
               tcfg.guide_rays)
        if guided is not None and key in guided:
            start = guided[key]
        else:
            gen = torch.Generator(model.codes.device).manual_seed(seed + i)
            start = guided_code(model, select_views(scene, ids), tcfg=tcfg, lambda_gd=lambda_gd,
                                generator=gen)[0]
            if guided is not None:
                guided[key] = start
        gen_ft = torch.Generator(model.codes.device).manual_seed(FINETUNE_SEED + seed + i)
        r = reconstruct_scene(model, scene, ids, eval_ids=eval_view_ids(V, ids, eval_every),
                              finetune=finetune, tcfg=tcfg, generator=gen_ft, start=start)
        lp = metrics.lpips(r["preds"], r["gts"])
        vals = {"PSNR": r["psnr"].tolist(), "SSIM": r["ssim"].tolist(),
                "LPIPS": None if lp is None else lp.tolist()}
        for k, v in vals.items():
            per_image[k] = None if (v is None or per_image[k] is None) else per_image[k] + v
        rows.append({"scene": scene["name"], "input_ids": ids, "n_eval": len(r["eval_ids"]),
                     **{k: metrics.mean(v) for k, v in vals.items()}})
        preds.append(r["preds"]), gts.append(r["gts"])
    out = {k: metrics.mean(v) for k, v in per_image.items()}        # mean over all images
    out["FID"] = _fid_kid(torch.cat(preds), torch.cat(gts)) if with_fid else None
    out["FID_network"] = fid.fid_network() if with_fid else None  # which features; comparable?
    out.update(task="recon", label=label, finetune=finetune, input_views=list(input_views),
               eval_every=eval_every, n_images=sum(r["n_eval"] for r in rows), scenes=rows)
    return out


def evaluate_ablations(models: dict, data, ablations=tuple(ABLATIONS), **kwargs) -> dict:
    """The paper's test-time ablation: {"A0": result, ...}; models = {"single-stage": m1,
    "two-stage": m2} (A1 needs the two-stage model). kwargs go to evaluate_reconstruction."""
    out, guided = {}, kwargs.pop("guided", {})
    for a in ablations:
        mode, ft = ABLATIONS[a]
        if mode not in models:
            raise ValueError(f"ablation {a} needs a {mode} model (models has {sorted(models)})")
        out[a] = evaluate_reconstruction(models[mode], data, finetune=ft, guided=guided,
                                         label=f"{a} ({mode}, {ft})", **kwargs)
    return out


@torch.no_grad()
def evaluate_codes(model, codes, data, views=None) -> dict:
    """PSNR/SSIM of given codes (N, 3, C, R, R) rendered at the views of scenes 0..N-1
    (e.g. a model's own training codes against its training images: an upper bound)."""
    ds = _dataset(data, model.cfg.image_res)
    ps, ss = [], []
    for i, code in enumerate(codes):
        sc = ds[i]
        ids = list(range(sc["images"].shape[0])) if views is None else list(views)
        K = sc["K"][ids] if sc["K"].dim() == 3 else sc["K"]
        pred = render_views(model, code.to(model.codes.device), sc["c2w"][ids], K,
                            res=sc["images"].shape[1])
        ps += metrics.psnr(pred, sc["images"][ids]).tolist()
        ss += metrics.ssim(pred, sc["images"][ids]).tolist()
    return {"PSNR": float(np.mean(ps)), "SSIM": float(np.mean(ss)), "n_images": len(ps)}


# ----------------------------------------------------------------------------- generation
def code_density_grid(model, code, res: int = 48) -> torch.Tensor:
    """The density of one code (3, C, R, R) at res^3 cell centres: (res, res, res)."""
    field = model.field(code[None].to(model.codes.device))
    return geometry.density_grid(lambda xyz: field.density(xyz[None])[0], res=res,
                                device=model.codes.device)


def surface_points(model, code, threshold: float, res: int = 48, n_points: int = 1024, seed: int = 0,
                   grid: torch.Tensor | None = None):
    """(P, 3) points on the density shell {sigma > threshold} of one code (P = 0 if empty).
    grid: its code_density_grid, when several thresholds share one evaluation."""
    g = torch.Generator().manual_seed(seed)
    grid = code_density_grid(model, code, res) if grid is None else grid
    return geometry.points_from_grid(grid, threshold, n_points, generator=g).cpu()


def calibrate_threshold(model, train_data, n_codes: int = 4, candidates=None, res: int = 48,
                        n_points: int = 1024) -> dict:
    """The density threshold whose shells of the first n_codes TRAINING codes best match
    those scenes' true surface points (mean Chamfer distance over a log grid)."""
    ds = _dataset(train_data, model.cfg.image_res)
    candidates = candidates or [float(t) for t in np.logspace(-1, 3, 13)]
    n = min(n_codes, len(ds), len(model.codes))
    if model.names and list(ds.names[:n]) != list(model.names[:n]):
        raise ValueError("calibrate_threshold: the training folder's scenes differ from the model's")
    cds = np.zeros((n, len(candidates)))
    for i in range(n):
        ref, _ = ds.surface(i)
        grid = code_density_grid(model, model.codes[i], res)           # one evaluation, 13 thresholds
        for j, t in enumerate(candidates):
            p = surface_points(model, model.codes[i], t, res, n_points, seed=i, grid=grid)
            cds[i, j] = geometry.chamfer_distance(p, ref) if len(p) else math.inf
    curve = cds.mean(0)
    best = int(np.argmin(curve))
    return {"threshold": candidates[best], "chamfer": float(curve[best]),
            "candidates": candidates, "curve": curve.tolist()}


def image_coverage(fake: torch.Tensor, real: torch.Tensor) -> dict:
    """Generation quality in IMAGE space, with no pretrained network: each object is its
    renders at the same V cameras, fake (S, V, H, W, 3) samples, real (N, V, H, W, 3)
    unseen test objects, and two objects are as close as the PSNR of their renders
    (MSE over all V views). As COV / MMD for shapes (geometry.coverage_mmd):

        COV       fraction of test objects that are the nearest one of some sample
                  (diversity: samples that all look alike cover one object);
        MMD-PSNR  mean over test objects of the PSNR of the closest sample (fidelity
                  seen from the data: is every real car near some sample?);
        PREC-PSNR mean over samples of the PSNR of the closest test object (fidelity
                  seen from the samples: does every sample look like some real car?).
    Higher is better for all three. Cars share one canonical pose in SRN-style data, so
    the same cameras show the same side of every object."""
    f = fake.flatten(1).float()                                         # (S, V*H*W*3)
    r = real.flatten(1).float()                                         # (N, ...)
    mse = torch.cdist(f, r).pow(2) / f.shape[1]                         # (S, N)
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    nearest = psnr.argmax(dim=1)                                        # (S,)
    return {"IMG_COV": len(set(nearest.tolist())) / r.shape[0],
            "IMG_MMD": float(psnr.max(dim=0).values.mean()),
            "IMG_PREC": float(psnr.max(dim=1).values.mean())}


def renders_at_test_cameras(model, codes, scenes, n_views: int = 4, progress: bool = False):
    """Codes (S, 3, C, R, R) rendered at n_views cameras evenly spread over the first test
    scene's spiral, and every test scene's images at those views: (fake (S, V, H, W, 3),
    real (N, V, H, W, 3), view ids), what `image_coverage` compares."""
    sc0 = scenes[0]                                  # every code seen from the same cameras
    ids = [i * len(sc0["c2w"]) // n_views for i in range(min(n_views, len(sc0["c2w"])))]
    real = torch.stack([sc["images"][ids] for sc in scenes])             # (N, V, H, W, 3)
    fake = torch.stack([render_views(model, c, sc0["c2w"][ids], sc0["K"][0],
                                     res=sc0["images"].shape[1])
                        for c in tqdm(codes, desc="renders", disable=not progress)])
    return fake, real, ids


def evaluate_generation(model, data, n_samples: int = 8, threshold: float = 10.0,
                        n_scenes: int | None = None, res: int = 48, n_points: int = 1024,
                        steps: int | None = None, seed: int = 0, with_fid: bool = True,
                        fid_views: int = 4, progress: bool = True, label: str = "minissd",
                        sampler=None) -> dict:
    """COV / MMD (Chamfer) of n_samples generated shapes against the true surfaces of the
    test objects, the same in image space (`image_coverage`: renders of every sample at
    fid_views cameras of the test spiral vs the test images at those cameras), and FID /
    KID of the renders against the test images (None without Inception weights).
    Samples with an empty shell are left out of COV / MMD (counted in n_empty).
    sampler(model, n, steps, generator) -> codes: default generate.sample_codes (a DiffRF
    model passes related.diffrf.sample_grids: the rest reads only model.field/cfg/codes)."""
    ds = _dataset(data, model.cfg.image_res)
    n_ref = min(len(ds), n_scenes or len(ds))
    refs = [ds.surface(i) for i in range(n_ref)]
    if any(r is None for r in refs):
        raise ValueError("evaluate_generation: a test scene has no surface.npz")
    gen = torch.Generator(model.codes.device).manual_seed(seed)
    codes = torch.cat([(sampler or sample_codes)(model, 1, steps, gen) for _ in
                       tqdm(range(n_samples), desc=f"sample {label}", disable=not progress)])
    pts = [surface_points(model, c, threshold, res, n_points, seed=seed + j) for j, c in
           enumerate(tqdm(codes, desc="surfaces", disable=not progress))]
    full = [p for p in pts if len(p)]
    cm = geometry.coverage_mmd(full, [r[0] for r in refs]) if full else {"cov": 0.0, "mmd": None}
    scenes = [ds[i] for i in range(n_ref)]
    fake, real, ids = renders_at_test_cameras(model, codes, scenes, fid_views, progress)
    img = image_coverage(fake, real)
    fd = kid = None
    if with_fid and fid.inception_features(torch.zeros(1, 8, 8, 3) + 1) is not None:
        fd, kid = _fid_kid(fake.flatten(0, 1), torch.cat([sc["images"] for sc in scenes]), kid=True)
    return {"task": "generation", "label": label, "COV": cm["cov"], "MMD": cm["mmd"], **img,
            "FID": fd, "KID": kid, "FID_network": fid.fid_network() if with_fid else None,
            "threshold": threshold, "n_samples": n_samples,
            "n_empty": len(pts) - len(full), "n_reference": n_ref, "image_views": ids}


# ----------------------------------------------------------------------------- tables
def cell(col: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    scale, fmt = _SHOW.get(col, (1, "{:.4g}"))
    return fmt.format(value * scale)


def markdown_table(rows: dict, columns=RECON_COLUMNS) -> str:
    """{label: {column: value or None}} -> a markdown table ('n/a' where None)."""
    lines = ["| method | " + " | ".join(HEADERS.get(c, c) for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cell(c, r.get(c)) for c in columns) + " |"
              for label, r in rows.items()]
    return "\n".join(lines)


def side_by_side(ours: dict, paper: dict) -> dict:
    """Table rows 'X ours', 'X paper' for each key X of ours (e.g. A0..A3)."""
    return {f"{k} {who}": r if who == "ours" else paper.get(k, {})
            for k, r in ours.items() for who in ("ours", "paper")}


def write_json(obj, path: str) -> str:
    """Write results as JSON (None and non-finite floats -> null), via a temporary file."""
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return float(x) if math.isfinite(x) else None
        return x.item() if isinstance(x, np.generic) else x
    return write_atomic(path, lambda f: json.dump(clean(obj), f, indent=1), binary=False)
