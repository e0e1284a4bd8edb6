"""`python -m minissd complete`: masked completion of objects' fields with either prior
(a DiffRF voxel model or a minissd triplane model), measured against their own views.

The command-line layer only: parse flags, check paths, call minissd/related/completion_eval.py."""
from __future__ import annotations

import os

import matplotlib
import torch
from tqdm.auto import tqdm

from minissd.cli import SEED_MAX, non_negative, positive, writable_dir, writable_file
from minissd.config import pick_device
from minissd.data.srn import SRNDataset
from minissd.errors import UserError
from minissd.eval.evaluate import write_json
from minissd.related.completion import parse_mask
from minissd.related.completion_eval import evaluate_completion, fit_inputs
from minissd.related.diffrf import DiffRFModel, is_diffrf_file
from minissd.ssd.model import Model
from minissd.utils import evenly_spaced

KEYS = ("psnr_known_input", "psnr_known", "psnr_completed_input", "psnr_completed",
        "baseline_psnr_completed", "diversity")


def add_arguments(p):
    p.add_argument("--ckpt", required=True, help="a model file: DiffRF (train --model diffrf) or SSDNeRF")
    p.add_argument("--data", required=True, help="SRN-format folder; objects of the model's training "
                   "set use their training code, others are fitted from their views")
    p.add_argument("--mask", required=True, help="back-half (x > 0) or box:x0,y0,z0,x1,y1,z1")
    p.add_argument("--out", required=True, help="output folder (one figure per object)")
    p.add_argument("--json", help="write per-object and mean metrics here")
    p.add_argument("--n", type=positive(64), default=3, help="proposals per object")
    p.add_argument("--objects", type=positive(), help="only N objects (default: all)")
    p.add_argument("--skip", type=int, default=0, help="start at object index SKIP (validation/test splits)")
    p.add_argument("--guide-lr", type=float, default=1.0, help="triplane only: FieldMatch step size (0 = off)")
    p.add_argument("--views", type=positive(), default=8, help="views per object to measure on")
    p.add_argument("--steps", type=positive(10000), help="reverse steps (default: the model's ddim_steps)")
    p.add_argument("--resample", type=positive(100), default=1, help="RePaint resampling per step (1 = none)")
    p.add_argument("--start", type=non_negative(9999), help="start at noise level T0 from the mean-code "
                   "fill noised to T0 (SDEdit-like) instead of from pure noise (default: pure noise)")
    p.add_argument("--seed", type=non_negative(SEED_MAX), default=0, help="sampling seed (object i: seed + i)")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")


def load_any(path: str, device):
    if not os.path.isfile(path):
        raise UserError(f"--ckpt {path}: not found")
    return DiffRFModel.load(path, device) if is_diffrf_file(path) else Model.load(path, device)


def save_figure(res: dict, path: str, title: str) -> str:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    im = res["images"]
    v = int(im["region"].flatten(1).sum(1).argmax())                  # the view showing most of the region
    masked = im["input"][v].clone()
    masked[im["region"][v]] = 0.5
    panels = [("masked input", masked), ("truth", im["truth"][v]), ("mean-code fill", im["baseline"][v])]
    panels += [(f"proposal {k + 1}", p[v]) for k, p in enumerate(im["proposals"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2 * len(panels), 2.3))
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(img.numpy())
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def run(args):
    box = parse_mask(args.mask)
    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data}: no such folder")
    if args.json:
        writable_file(args.json, "--json")
    writable_dir(args.out, "--out")
    model = load_any(args.ckpt, pick_device(args.device))
    if args.start is not None and args.start >= model.prior.schedule.T:
        raise UserError(f"--start {args.start}: must be below the model's T = {model.prior.schedule.T}")
    ds = SRNDataset(args.data, resolution=model.cfg.image_res)
    if not 0 <= args.skip < len(ds):
        raise UserError(f"--skip {args.skip}: {args.data} has {len(ds)} objects")
    n = min(len(ds) - args.skip, args.objects or len(ds))
    scenes = []
    for i in range(args.skip, args.skip + n):
        sc = ds[i]
        ids = evenly_spaced(len(sc["c2w"]), min(args.views, len(sc["c2w"])))
        scenes.append({**{k: sc[k][ids] for k in ("images", "c2w", "K")}, "name": sc["name"], "all": sc})
    names = list(model.names or [])
    if all(sc["name"] in names for sc in scenes):
        f_in = torch.stack([model.codes[names.index(sc["name"])] for sc in scenes])
        source = "training codes"
    else:
        print(f"fitting {n} objects from their views ...")
        f_in = fit_inputs(model, [sc["all"] for sc in scenes], progress=True)
        source = "fitted from all views"
    rows = []
    for i, sc in enumerate(tqdm(scenes, desc="complete")):
        r = evaluate_completion(model, sc, f_in[i:i + 1], box, args.n, args.steps, args.seed + i, args.resample,
                                args.guide_lr, args.start)
        rows.append({"object": sc["name"], **{k: r[k] for k in KEYS}})
        save_figure(r, os.path.join(args.out, f"{sc['name']}.png"),
                    f"{sc['name']}: known {r['psnr_known']:.1f} dB (input {r['psnr_known_input']:.1f}), "
                    f"completed {r['psnr_completed']:.1f} dB (mean code {r['baseline_psnr_completed']:.1f})")
    ok = lambda k: [r[k] for r in rows if r[k] == r[k]]                 # noqa: E731  (drop NaN)
    mean = {k: (sum(ok(k)) / len(ok(k)) if ok(k) else None) for k in KEYS}
    summary = {"ckpt": args.ckpt, "model": getattr(model, "mode", ""), "data": args.data,
               "mask": args.mask, "box": box, "f_in": source, "n_proposals": args.n,
               "resample": args.resample, "guide_lr": args.guide_lr, "start": args.start,
               "steps": args.steps, "skip": args.skip,
               "mean": mean, "objects": rows}
    if args.json:
        write_json(summary, args.json)
    print("mean: " + "  ".join(f"{k} {v:.2f}" for k, v in mean.items() if v is not None))
    return 0
