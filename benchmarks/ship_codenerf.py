"""Ship a trained CodeNeRF run into assets/models/ with its manifest line.

    python benchmarks/ship_codenerf.py --run RUN_DIR --wall-s 1234 --command "python -m minissd train ..."

Copies RUN_DIR/model.pt (float16) as assets/models/<model_key>.pt and records, in
assets/models/manifest.json: the command, the wall time (as measured by whoever ran it:
say in --note whether the machine was loaded), iterations, size, and the PSNR / SSIM of
the training codes rendered at `--views` training views of the first `--objects` objects
(an upper bound for reconstructions, as the SSDNeRF entries' train_view_psnr).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

from minissd.data.procedural import ensure_dataset
from minissd.data.srn import SRNDataset
from minissd.eval import metrics
from minissd.related.codenerf import CodeNeRF
from minissd.related.codenerf_fit import model_key, render_codes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "assets", "models", "manifest.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder holding model.pt")
    ap.add_argument("--wall-s", type=float, required=True, help="measured training wall time (s)")
    ap.add_argument("--command", required=True, help="the training command, as run")
    ap.add_argument("--note", default="", help="e.g. 'measured under load (8 helpers on 2 cores)'")
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--views", type=int, default=5)
    a = ap.parse_args()
    model = CodeNeRF.load(os.path.join(a.run, "model.pt"))
    cfg = model.cfg
    key = model_key(cfg)
    data = ensure_dataset("cars", "train", n_scenes=cfg.data_scenes, n_views=cfg.data_views,
                          resolution=cfg.image_res, seed=0, progress=False)
    ds = SRNDataset(data, resolution=cfg.image_res)
    ps, ss = [], []
    for i in range(min(a.objects, len(ds))):
        sc = ds[i]
        v = list(range(0, sc["images"].shape[0], max(1, sc["images"].shape[0] // a.views)))[:a.views]
        K = sc["K"][v] if sc["K"].dim() == 3 else sc["K"]
        pred = render_codes(model, model.codes[i:i + 1], sc["c2w"][v], K, cfg.image_res)
        ps += metrics.psnr(pred, sc["images"][v]).tolist()
        ss += metrics.ssim(pred, sc["images"][v]).tolist()
    dst = os.path.join(ROOT, "assets", "models", key + ".pt")
    shutil.copyfile(os.path.join(a.run, "model.pt"), dst)
    with open(MANIFEST) as f:
        manifest = json.load(f)
    manifest[key] = {"file": key + ".pt", "mode": "codenerf", "preset": cfg.name, "iters": cfg.iters,
                     "command": a.command, "wall_s": a.wall_s, "note": a.note, "device": "cpu",
                     "threads": 1, "size_bytes": os.path.getsize(dst),
                     "views_per_scene": cfg.views_per_scene,
                     "final_train_ray_psnr": round(sum(r["psnr"] for r in model.log[-50:])
                                                   / len(model.log[-50:]), 2),
                     "train_view_psnr": round(sum(ps) / len(ps), 2),
                     "train_view_ssim": round(sum(ss) / len(ss), 4)}
    with open(MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(json.dumps(manifest[key], indent=1))


if __name__ == "__main__":
    main()
