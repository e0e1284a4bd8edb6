"""Calibrate the test-time settings (config.TestConfig) on a VALIDATION split, then report
Table 3 (A0-A3) on a separate TEST split, with the standard error of every difference.

    # 1. sweep on validation objects (procedural seed 1, never used for reporting)
    python benchmarks/calibrate_testtime.py sweep --ckpt SINGLE.pt --scenes 6 --json sweep.json
    # 2. report on the test split (seed 0) with the chosen settings
    python benchmarks/calibrate_testtime.py report --ckpt SINGLE.pt --ckpt2 TWO.pt --scenes 8 \
        --test-set lambda_gd=30 --test-set ft_c_diff=4 --json ablation.json

Sweep, in two stages (1 input view, view 64 of a 251-view spiral, every 10th other view):
  1. guidance scale lambda_gd, scored without finetuning (A3);
  2. with the best lambda_gd, finetuning (eq. 7): the diffusion weight lambda'_diff
     (ft_c_diff) and the learning rate (ft_lr_scale x the paper's schedule), for
     rend+diff and rend-only finetuning, all starting from the same guided samples.
Adam is invariant to a common scale of both loss terms, so only their ratio matters:
ft_c_rend stays at the training constant and ft_c_diff moves.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
import math
import sys
import time

import numpy as np

from minissd.data.procedural import ensure_dataset
from minissd.eval import evaluate as ev
from minissd.ssd.model import Model

VAL_SEED, TEST_SEED = 1, 0


def split(cfg, seed: int, n: int) -> str:
    return ensure_dataset("cars", "test", n_scenes=n, n_views=251, resolution=cfg.image_res,
                          seed=seed, progress=False)


def per_scene(r: dict) -> np.ndarray:
    return np.array([s["PSNR"] for s in r["scenes"]])


def run_one(model, data, tcfg, finetune, n, eval_every, guided, label):
    t0 = time.perf_counter()
    r = ev.evaluate_reconstruction(model, data, input_views=(64,), finetune=finetune, n_scenes=n,
                                   eval_every=eval_every, tcfg=tcfg, with_fid=False,
                                   progress=False, guided=guided, label=label)
    r["seconds"] = time.perf_counter() - t0
    print(f"{label:48s} PSNR {r['PSNR']:6.2f}  SSIM {r['SSIM']:.4f}  ({r['seconds']:.0f} s)",
          flush=True)
    return r


def sweep(args):
    model = Model.load(args.ckpt)
    base = model.test.with_overrides(args.test_set)
    data = split(model.cfg, VAL_SEED, args.scenes)
    print(f"validation: {data} ({args.scenes} objects), base {base}")
    rows, guided = {}, {}
    for lam in args.lambdas:
        t = replace(base, lambda_gd=lam)
        rows[f"A3 lambda_gd={lam:g}"] = run_one(model, data, t, "none", args.scenes,
                                                args.eval_every, guided, f"A3 lambda_gd={lam:g}")
    best_lam = max(args.lambdas, key=lambda lam: rows[f"A3 lambda_gd={lam:g}"]["PSNR"])
    print(f"-> lambda_gd = {best_lam:g}")
    best = replace(base, lambda_gd=best_lam)
    for lr in args.lr_scales:
        label = f"A2 rend lr x{lr:g}"
        rows[label] = run_one(model, data, replace(best, ft_lr_scale=lr), "rend", args.scenes,
                              args.eval_every, guided, label)
        for c in args.c_diffs:
            label = f"A0 rend+diff lr x{lr:g} c_diff={c:g}"
            rows[label] = run_one(model, data, replace(best, ft_lr_scale=lr, ft_c_diff=c),
                                  "rend+diff", args.scenes, args.eval_every, guided, label)
    a0 = {k: v for k, v in rows.items() if k.startswith("A0")}
    pick = max(a0, key=lambda k: a0[k]["PSNR"])
    print(f"-> best finetuning on validation: {pick} ({a0[pick]['PSNR']:.2f} dB; "
          f"A3 at that lambda_gd {rows[f'A3 lambda_gd={best_lam:g}']['PSNR']:.2f} dB)")
    out = {"ckpt": args.ckpt, "data": data, "scenes": args.scenes, "best_lambda_gd": best_lam,
           "best_finetune": pick, "rows": {k: {m: v[m] for m in ("PSNR", "SSIM", "seconds")}
                                           | {"per_scene": per_scene(v).tolist()}
                                           for k, v in rows.items()},
           "command": "python benchmarks/calibrate_testtime.py " + " ".join(sys.argv[1:])}
    if args.json:
        ev.write_json(out, args.json)
    return out


def report(args):
    models = {"single-stage": Model.load(args.ckpt)}
    if args.ckpt2:
        models["two-stage"] = Model.load(args.ckpt2)
    for m in models.values():
        m.test = m.test.with_overrides(args.test_set)
    cfg = models["single-stage"].cfg
    data = split(cfg, TEST_SEED, args.scenes)
    print(f"test: {data} ({args.scenes} objects), test-time {models['single-stage'].test}")
    abl = [a for a in args.rows if a != "A1" or args.ckpt2]
    res = ev.evaluate_ablations(models, data, abl, input_views=(64,), n_scenes=args.scenes,
                                eval_every=args.eval_every, with_fid=False, progress=True)
    if args.previous:                        # rows measured earlier with the same settings
        with open(args.previous) as f:
            res = {**json.load(f)["results"], **res}
    res = {a: res[a] for a in ("A0", "A1", "A2", "A3") if a in res}
    print(ev.markdown_table(ev.side_by_side(res, ev.PAPER_ABLATION)))
    a0 = per_scene(res["A0"])
    diffs = {}
    for a in [a for a in ("A1", "A2", "A3") if a in res]:
        d = a0 - per_scene(res[a])
        se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        diffs[a] = {"mean": float(d.mean()), "se": float(se)}
        verdict = "above by more than 1 SE" if d.mean() > se else "within noise or below"
        print(f"A0 - {a}: {d.mean():+.2f} dB (SE of per-scene differences {se:.2f}): {verdict}")
    out = {"results": res, "differences": diffs, "test_config": models["single-stage"].test.to_dict(),
           "command": "python benchmarks/calibrate_testtime.py " + " ".join(sys.argv[1:])}
    if args.json:
        ev.write_json(out, args.json)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("sweep", "report"):
        q = sub.add_parser(name)
        q.add_argument("--ckpt", required=True, help="single-stage model file")
        q.add_argument("--scenes", type=int, default=6)
        q.add_argument("--eval-every", type=int, default=10)
        q.add_argument("--test-set", action="append", default=[], metavar="KEY=VALUE")
        q.add_argument("--json")
    s, r = sub.choices["sweep"], sub.choices["report"]
    s.add_argument("--lambdas", type=float, nargs="+", default=[7.5, 15, 30, 60, 120])
    s.add_argument("--lr-scales", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    s.add_argument("--c-diffs", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    r.add_argument("--ckpt2", help="two-stage model file (row A1)")
    r.add_argument("--rows", nargs="+", default=["A0", "A1", "A2", "A3"], help="ablation rows to run")
    r.add_argument("--previous", help="JSON of an earlier report whose rows are added (e.g. A1 later)")
    args = p.parse_args(argv)
    return sweep(args) if args.what == "sweep" else report(args)


if __name__ == "__main__":
    main()
