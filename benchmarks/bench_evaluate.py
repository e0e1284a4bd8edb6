"""Benchmark of the evaluation protocol (issue 6): what one evaluation costs and gives.

For the chosen preset's single-stage model (trained once and cached by load_or_train):
1. reconstruction: seconds per test object (guided sampling + rend+diff finetuning +
   rendering the scored views) and the mean PSNR / SSIM, 1 input view;
2. the sanity bounds: training codes at their training views vs random codes;
3. generation: density-threshold calibration, then COV / MMD of n samples vs the test
   split's true surfaces, with seconds for each.

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate.py [--preset smoke] [--scenes 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from minissd.config import get_preset
from minissd.data.procedural import ensure_dataset
from minissd.eval import evaluate as ev
from minissd.ssd.model import load_or_train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--scenes", type=int, default=2, help="test objects")
    p.add_argument("--views", type=int, default=24, help="views per test object")
    p.add_argument("--eval-every", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="generated samples for COV / MMD")
    p.add_argument("--grid", type=int, default=32, help="density grid resolution")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = get_preset(a.preset)
    model = load_or_train("single-stage", cfg, progress=False)
    test = ensure_dataset("cars", "test", n_scenes=a.scenes, n_views=a.views,
                          resolution=cfg.image_res, seed=0, progress=False)
    train = ensure_dataset("cars", "train", n_scenes=cfg.data_scenes, n_views=cfg.data_views,
                           resolution=cfg.image_res, seed=0, progress=False)

    t0 = time.perf_counter()
    r = ev.evaluate_reconstruction(model, test, n_scenes=a.scenes, eval_every=a.eval_every,
                                   progress=False)
    dt = time.perf_counter() - t0
    print(f"[recon {cfg.name}] {a.scenes} objects x {r['n_images'] // a.scenes} scored views: "
          f"{dt / a.scenes:.2f} s/object, PSNR {r['PSNR']:.2f} dB, SSIM {r['SSIM']:.3f}, "
          f"LPIPS {ev.cell('LPIPS', r['LPIPS'])}, FID {ev.cell('FID', r['FID'])}")
    n = min(4, len(model.codes))
    hi = ev.evaluate_codes(model, model.codes[:n], train)
    lo = ev.evaluate_codes(model, 0.5 * torch.randn(model.codes[:n].shape), train)
    print(f"[bounds {cfg.name}] training codes {hi['PSNR']:.2f} dB, random codes {lo['PSNR']:.2f} dB")

    t0 = time.perf_counter()
    cal = ev.calibrate_threshold(model, train, n_codes=4, res=a.grid)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = ev.evaluate_generation(model, test, n_samples=a.samples, threshold=cal["threshold"],
                               res=a.grid, progress=False)
    t_gen = time.perf_counter() - t0
    print(f"[generation {cfg.name}] threshold {cal['threshold']:.3g} (calibrated in {t_cal:.1f} s, "
          f"chamfer {cal['chamfer']:.4f}); {a.samples} samples in {t_gen:.1f} s: "
          f"COV {ev.cell('COV', g['COV'])}%, MMD x1e3 {ev.cell('MMD', g['MMD'])}, "
          f"FID {ev.cell('FID', g['FID'])}, KID x1e3 {ev.cell('KID', g['KID'])}, empty {g['n_empty']}")


if __name__ == "__main__":
    main()
