"""Benchmarks of the NeRF auto-decoder (issue 3). Prints numbers; not a test.

    (a) one toy car, 64x64, 50 training views, laptop preset: held-out PSNR vs time
        (target >= 28 dB within 10 min on 2 CPU cores)
    (b) 32 toy cars auto-decoded together: mean held-out PSNR (target >= 26 dB)
    (c) a full 64x64 render of the trained car of (a) with and without empty-space
        skipping (occupancy grid + early termination): time and PSNR between the two
        (target >= 3x faster, PSNR > 40 dB)

Every car gets 60 views: 0..49 train, 50..59 held out (same object, unseen poses).

    OMP_NUM_THREADS=1 python benchmarks/bench_autodecoder.py --part a --minutes 10
    OMP_NUM_THREADS=1 python benchmarks/bench_autodecoder.py --part b --minutes 20
    OMP_NUM_THREADS=1 python benchmarks/bench_autodecoder.py --part c
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from minissd.config import Config, get_preset
from minissd.data import procedural, srn
from minissd.nerf.autodecoder import heldout_psnr, train_autodecoder
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.render import render_image
from minissd.nerf.triplane import CodeBank, make_field

N_TRAIN, N_VIEWS = 50, 60


def load(n_scenes: int, res: int):
    root = procedural.ensure_dataset("cars", "train", n_scenes=n_scenes, n_views=N_VIEWS, resolution=res)
    train = srn.SRNDataset(root, views=list(range(N_TRAIN))).stack()
    held = srn.SRNDataset(root, views=list(range(N_TRAIN, N_VIEWS))).stack()
    return train, held


def checkpoint_path(tag: str) -> str:
    return os.path.join("/tmp", f"minissd_bench_autodecoder_{tag}.pt")


def fit(tag, cfg, n_scenes, iters, minutes, device):
    train, held = load(n_scenes, cfg.image_res)
    print(f"[{tag}] {n_scenes} cars x {N_TRAIN} views at {cfg.image_res}px, preset {cfg.name}: "
          f"{cfg.rays_per_scene} rays x {cfg.n_samples} samples, batch {min(n_scenes, cfg.scenes_per_batch)}, "
          f"R={cfg.code_res}, lr_code={cfg.lr_code}, c_rend={cfg.c_rend}, threads={torch.get_num_threads()}")
    curve = []

    def report(it, bank, decoder):
        if it > 0 and (it % (10 * log_every) == 0):
            p = heldout_psnr(decoder.eval(), bank.activated()[:4], _sub(held, 4), cfg, _occ(bank, 4))
            decoder.train()
            curve.append((it, time.time() - t0, float(p.mean())))
            print(f"  iter {it:5d}  {time.time() - t0:6.1f}s  held-out PSNR (first <=4 cars) {p.mean():.2f} dB")

    log_every = 50
    t0 = time.time()
    bank, dec, log = train_autodecoder(cfg, train, iters, device, log_every=log_every, callback=report,
                                       max_seconds=minutes * 60, progress=False)
    train_s = time.time() - t0
    p = heldout_psnr(dec, bank.activated(), held, cfg, bank.occupancy)
    print(f"[{tag}] trained {log[-1]['iter'] + 1} iters in {train_s:.1f}s "
          f"({1000 * train_s / (log[-1]['iter'] + 1):.0f} ms/iter); "
          f"train-ray PSNR {log[-1]['psnr']:.2f} dB; occupied {log[-1].get('occupied', 1.0):.2f}")
    print(f"[{tag}] held-out PSNR over {N_VIEWS - N_TRAIN} views: mean {p.mean():.2f} dB "
          f"(min {p.min():.2f}, max {p.max():.2f}) over {len(p)} car(s)")
    torch.save({"codes_": bank.codes_.cpu(), "decoder": dec.state_dict(), "cfg": cfg.to_dict()},
               checkpoint_path(tag))
    return bank, dec


def _sub(d, n):
    return {k: (v[:n] if torch.is_tensor(v) or isinstance(v, list) else v) for k, v in d.items()}


def _occ(bank, n):
    return bank.occupancy[torch.arange(min(n, len(bank)))] if bank.occupancy is not None else None


def bench_skipping(device, repeats=3):
    path = checkpoint_path("a")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run --part a first (it trains the car to render)")
    ck = torch.load(path)
    cfg = Config.from_dict(ck["cfg"])                                   # the config it was trained with
    dec = TriplaneDecoder.from_config(cfg)
    dec.load_state_dict(ck["decoder"])
    dec.eval()
    bank = CodeBank(1, cfg.code_ch, cfg.code_res)
    bank.codes_ = ck["codes_"][:1].to(device)
    field = make_field(dec.to(device), bank.activated())
    _, held = load(1, cfg.image_res)
    c2w, K = held["c2w"][0, :1].to(device), held["K"][0, 0].to(device)
    H = W = cfg.image_res
    t = time.time()
    occ = OccupancyGrid.from_field(field, 1, cfg.occ_grid_res, cfg.occ_threshold,
                                   generator=torch.Generator().manual_seed(0), device=device)
    t_occ = time.time() - t

    def timed(**kw):
        best, out = 1e9, None
        for _ in range(repeats):
            t = time.time()
            out = render_image(field, c2w, K, H, W, cfg.n_samples, **kw)
            best = min(best, time.time() - t)
        return best, out["rgb"]

    t_dense, dense = timed(occupancy=None, early_stop=False)
    t_occ_only, occ_only = timed(occupancy=occ, early_stop=False)
    t_fast, fast = timed(occupancy=occ, early_stop=True)
    ps = lambda a, b: float(-10 * torch.log10((a - b).pow(2).mean().clamp_min(1e-12)))
    gt = held["images"][0, 0].to(device)
    print(f"[c] {H}x{W} render, {cfg.n_samples} samples/ray, grid {cfg.occ_grid_res}^3 "
          f"(threshold {cfg.occ_threshold}, occupied {occ.fraction().item():.3f}, built in {t_occ:.2f}s); "
          f"best of {repeats}")
    print(f"[c] dense (no skipping):            {1000 * t_dense:7.1f} ms   PSNR vs GT {ps(dense, gt):.2f} dB")
    print(f"[c] occupancy grid only:            {1000 * t_occ_only:7.1f} ms   speed-up {t_dense / t_occ_only:.1f}x   "
          f"PSNR vs dense {ps(occ_only, dense):.2f} dB")
    print(f"[c] occupancy + early termination:  {1000 * t_fast:7.1f} ms   speed-up {t_dense / t_fast:.1f}x   "
          f"PSNR vs dense {ps(fast, dense):.2f} dB   PSNR vs GT {ps(fast, gt):.2f} dB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("a", "b", "c", "all"), default="all")
    ap.add_argument("--preset", default="laptop")
    ap.add_argument("--iters", type=int, default=100_000, help="upper bound; --minutes usually stops first")
    ap.add_argument("--minutes", type=float, default=10.0, help="training time budget per part")
    ap.add_argument("--scenes", type=int, default=32, help="cars in part b")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = get_preset(args.preset)
    dev = torch.device(args.device)
    if args.part in ("a", "all"):
        fit("a", cfg, 1, args.iters, args.minutes, dev)
    if args.part in ("c", "all"):
        bench_skipping(dev)
    if args.part in ("b", "all"):
        fit("b", cfg, args.scenes, args.iters, args.minutes, dev)


if __name__ == "__main__":
    main()
