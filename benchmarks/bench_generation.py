"""Generation quality of trained models, with no downloaded weights: do samples look like cars?

    python benchmarks/bench_generation.py --models SINGLE.pt TWO.pt [...] --samples 32 \
        --figure assets/figures/samples.png --json generation.json

For each model: `--samples` unconditional DDIM samples against `--refs` unseen procedural
test cars (split "test", seed 0):
  * geometry: COV / MMD of Chamfer distances between surface points (DiffRF's metric),
    with the density threshold calibrated on the model's own training codes;
  * images: image COV / MMD / PREC (evaluate.image_coverage), renders of every sample at
    4 cameras of the test spiral against the test cars' images at the same cameras.
With --figure, a PNG of the first 8 samples of every model (one row per model, four
views each), for docs/results.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from minissd.data.procedural import ensure_dataset
from minissd.eval import evaluate as ev
from minissd.related.diffrf import DiffRFModel, is_diffrf_file, sample_grids
from minissd.ssd.model import Model
from minissd.testtime.generate import sample_codes, save_strip, turntable


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="model files to compare")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--refs", type=int, default=32, help="unseen test cars")
    p.add_argument("--grid-res", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", help="write a PNG of samples of every model here")
    p.add_argument("--json")
    p.add_argument("--train-codes", action="store_true",
                   help="also score the first model's TRAINING codes as if they were samples "
                        "(what a prior that copies its training cars would reach)")
    args = p.parse_args(argv)
    rows, strips = {}, []
    for path in args.models:
        voxels = is_diffrf_file(path)                 # DiffRF (minissd/related/) samples grids
        m = DiffRFModel.load(path) if voxels else Model.load(path)
        sampler = (lambda m, n, steps=None, generator=None: sample_grids(m, n, steps, generator=generator)) \
            if voxels else sample_codes
        cfg = m.cfg
        test = ensure_dataset("cars", "test", n_scenes=args.refs, n_views=4, resolution=cfg.image_res,
                              seed=0, progress=False)
        train = ensure_dataset("cars", "train", n_scenes=cfg.data_scenes, n_views=cfg.data_views,
                               resolution=cfg.image_res, seed=0, progress=False)
        t0 = time.perf_counter()
        cal = ev.calibrate_threshold(m, train, res=args.grid_res)
        r = ev.evaluate_generation(m, test, args.samples, cal["threshold"], res=args.grid_res,
                                   seed=args.seed, with_fid=False, progress=False, sampler=sampler,
                                   label=f"{m.mode}, {cfg.views_per_scene or 'all'} views")
        r["seconds"] = time.perf_counter() - t0
        rows[f"{os.path.basename(path)}"] = r
        print(f"{r['label']:28s} COV {100 * r['COV']:5.1f}%  MMD {1e3 * (r['MMD'] or float('nan')):6.2f}e-3  "
              f"image COV {100 * r['IMG_COV']:5.1f}%  image MMD {r['IMG_MMD']:5.2f} dB  "
              f"image PREC {r['IMG_PREC']:5.2f} dB  ({r['n_empty']} empty, {r['seconds']:.0f} s)",
              flush=True)
        if args.figure:
            g = torch.Generator().manual_seed(args.seed)
            strips.append(turntable(m, sampler(m, 8, generator=g), n_frames=4))  # (8, 4, H, W, 3)
    if args.train_codes:
        m = Model.load(args.models[0])
        test = ensure_dataset("cars", "test", n_scenes=args.refs, n_views=4,
                              resolution=m.cfg.image_res, seed=0, progress=False)
        from minissd.data.srn import SRNDataset
        ds = SRNDataset(test, resolution=m.cfg.image_res)
        fake, real, _ = ev.renders_at_test_cameras(m, m.codes[:args.samples],
                                                   [ds[i] for i in range(len(ds))])
        r = {"label": "training codes (copying)", **ev.image_coverage(fake, real)}
        rows["train-codes"] = r
        print(f"{r['label']:28s} image COV {100 * r['IMG_COV']:5.1f}%  image MMD {r['IMG_MMD']:5.2f} dB  "
              f"image PREC {r['IMG_PREC']:5.2f} dB")
    print(ev.markdown_table({r["label"]: r for r in rows.values()},
                            ("COV", "MMD", "IMG_COV", "IMG_MMD", "IMG_PREC")))
    if args.figure:
        # one row per model: its 8 samples side by side, each seen from the front camera
        rows_img = torch.stack([s[:, 1] for s in strips])                 # (M, 8, H, W, 3)
        save_strip(rows_img, args.figure)
        print(f"-> {args.figure}")
    if args.json:
        ev.write_json({"results": rows, "command": "python benchmarks/bench_generation.py "
                       + " ".join(sys.argv[1:])}, args.json)


if __name__ == "__main__":
    main()
