"""Train the pretrained checkpoints shipped in assets/models/ and write their manifest.

    OMP_NUM_THREADS=1 python benchmarks/train_assets.py --preset smoke
    OMP_NUM_THREADS=1 python benchmarks/train_assets.py --preset laptop --modes single-stage --views 0

Each model is trained by `minissd.ssd.model.load_or_train` (the same path the notebooks use),
so the file name is the model key that `load_or_train` looks for: change a preset and the
shipped file no longer matches (the notebooks then train instead of loading). The
manifest (assets/models/manifest.json) records, per file, the exact command, the
iterations, the wall time and device, the size, and quality numbers measured on it:
PSNR of the training codes at every 5th training view of the first scenes (how well the
auto-decoder fits; all views for dense training, so for 3-view models most are unseen),
and the code statistics of compare.code_statistics.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import torch

from minissd.config import cache_dir, get_preset
from minissd.data.procedural import ensure_dataset
from minissd.eval.compare import code_statistics
from minissd.eval.evaluate import evaluate_codes
from minissd.ssd.model import ASSETS, load_or_train, model_key

MANIFEST = os.path.join(ASSETS, "models", "manifest.json")


def read_manifest() -> dict:
    if os.path.exists(MANIFEST):
        with open(MANIFEST) as f:
            return json.load(f)
    return {}


def write_manifest(manifest: dict) -> None:
    tmp = MANIFEST + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, MANIFEST)


def quality(model, cfg, n_scenes: int) -> dict:
    """PSNR/SSIM of the first training codes at every 5th training view, code statistics."""
    data_dir = ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views, cfg.image_res,
                              progress=False)
    n = min(n_scenes, len(model.codes))
    fit = evaluate_codes(model, model.codes[:n], data_dir, views=list(range(0, cfg.data_views, 5)))
    return {"train_view_psnr": round(fit["PSNR"], 2), "train_view_ssim": round(fit["SSIM"], 4),
            "code_stats": {k: round(v, 4) for k, v in code_statistics(model.codes).items()}}


def refresh_metrics(n_scenes: int) -> int:
    from minissd.ssd.model import Model
    manifest = read_manifest()
    for key, entry in manifest.items():
        path = os.path.join(ASSETS, "models", entry["file"])
        if not os.path.exists(path):
            continue
        model = Model.load(path)
        entry.update(quality(model, model.cfg, n_scenes))
        print(key, entry["train_view_psnr"], entry["train_view_ssim"])
    write_manifest(manifest)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--modes", nargs="+", default=["single-stage", "two-stage"])
    p.add_argument("--views", nargs="+", type=int, default=[0, 3], help="views per scene (0 = all)")
    p.add_argument("--iters", type=int, help="override the preset's iterations")
    p.add_argument("--eval-scenes", type=int, default=4, help="training scenes scored for PSNR")
    p.add_argument("--refresh-metrics", action="store_true",
                   help="re-measure the quality numbers of the manifest's existing files with the "
                        "current evaluation code (no training)")
    args = p.parse_args(argv)
    if args.refresh_metrics:
        return refresh_metrics(args.eval_scenes)
    os.makedirs(os.path.join(ASSETS, "models"), exist_ok=True)
    for views in args.views:
        for mode in args.modes:
            over = {"views_per_scene": views}
            if args.iters:
                over["iters"] = args.iters
            cfg = get_preset(args.preset, **over)
            key = model_key("cars", mode, cfg)
            shutil.rmtree(os.path.join(cache_dir(), "runs", key), ignore_errors=True)  # time it all
            t0 = time.time()
            model = load_or_train(mode, cfg, device="cpu", retrain=True)
            wall = time.time() - t0
            dst = os.path.join(ASSETS, "models", key + ".pt")
            model.save(dst)
            data_dir = ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views,
                                      cfg.image_res, progress=False)
            n = min(args.eval_scenes, len(model.codes))
            fit = evaluate_codes(model, model.codes[:n], data_dir,
                                 views=list(range(0, cfg.data_views, 5)))
            entry = {"file": os.path.basename(dst), "preset": cfg.name, "mode": mode,
                     "views_per_scene": views, "iters": cfg.iters,
                     "command": "OMP_NUM_THREADS=1 python benchmarks/train_assets.py "
                                + " ".join(sys.argv[1:]),
                     "wall_s": round(wall, 1), "threads": torch.get_num_threads(),
                     "device": "cpu", "size_bytes": os.path.getsize(dst),
                     "train_view_psnr": round(fit["PSNR"], 2), "train_view_ssim": round(fit["SSIM"], 4),
                     "code_stats": {k: round(v, 4) for k, v in code_statistics(model.codes).items()},
                     "final_loss_rend": model.log[-1 if mode == "single-stage" else cfg.iters - 1]["loss_rend"],
                     "final_loss_diff": model.log[-1]["loss_diff"]}
            manifest = read_manifest()
            manifest[key] = entry
            write_manifest(manifest)
            print(json.dumps({key: entry}, indent=1))


if __name__ == "__main__":
    main()
