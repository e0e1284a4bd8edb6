"""CPU-seconds of short pieces of the notebooks' full mode, for estimating their run time
without running them end to end (issue 18, item 6; docs/notebook_times.md).

Each piece runs a few iterations of a notebook's dominant loop with its full-mode settings
and prints CPU-seconds (time.process_time) per iteration; docs/notebook_times.md multiplies
them by the notebook's iteration counts. One torch thread; run niced on a shared machine:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 10 python benchmarks/notebook_pieces.py 04 01 03

Pieces: 01 (auto-decoder, 1 car x 512 rays), 04 (Algorithm 1 outer iterations at K_in = 4
and 2, with and without empty-space skipping), 06 (one DDIM step of 8 codes, one 64x64 and
one 32x32 render, the 128^3 mesh, with the shipped laptop single-stage model), 09 (the unposed
search of one image with short and shorter step counts, for CodeNeRF and SSDNeRF: the
difference is the cost of a step, the rest the grid search), 10 (2 of the 50
DDIM steps of each sampler the notebook runs, with the shipped laptop DiffRF and SSDNeRF
models). --amp sets cfg.amp for 01 and 04 (default auto, the laptop preset's since
2026-12-06); 06 and 10 run the shipped models as stored. (2026-12-06: 04, 06 and 10 were
run for docs/notebook_times.md; 01 and 09 were written then and not yet run, the CPU being
taken by training.)
"""
import argparse
import time

import torch

from minissd.config import get_preset
from minissd.data import procedural, srn
from minissd.nerf.autodecoder import train_autodecoder


def cpu_per_iter(fn, n: int) -> float:
    """CPU-seconds per call of fn() over n calls."""
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n


def piece_01(amp: str, n: int = 140):
    """Notebook 01: the one-car auto-decoder fit (2000 iterations, 1 car x 512 rays, 50 views)."""
    cfg = get_preset("laptop", scenes_per_batch=1, amp=amp)
    root = procedural.ensure_dataset("cars", "train", n_scenes=1, n_views=60, resolution=64, seed=0,
                                     progress=False)
    data = srn.SRNDataset(root, views=list(range(50))).stack()
    stamps = []
    t0 = time.process_time()
    train_autodecoder(cfg, data, n, log_every=1, progress=False,
                      callback=lambda it, *_: stamps.append(time.process_time() - t0))
    warm = cfg.occ_warmup
    print(f"01 auto-decoder, 1 car x 512 rays, amp={amp}: {stamps[warm - 1] / warm:.3f} CPU-s per iteration "
          f"before skipping (iterations 1-{warm}), "
          f"{(stamps[-1] - stamps[warm - 1]) / (n - warm):.3f} after ({n} iterations)", flush=True)


def piece_04(amp: str, n: int = 2):
    """Notebook 04: Algorithm 1 outer iterations of the laptop preset (64 cars x 50 views)."""
    from minissd.data.procedural import ensure_dataset
    from minissd.ssd.model import load_training_data
    from minissd.ssd.train import Trainer
    for k_in, occ_warmup in ((4, 1000), (2, 1000), (2, 0)):
        cfg = get_preset("laptop", amp=amp, k_in_schedule=((0, k_in),), occ_warmup=occ_warmup)
        data = load_training_data(ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views,
                                                 cfg.image_res, progress=False), cfg, "cpu")
        tr = Trainer(cfg, data, mode="single-stage")
        def step():
            tr.set_learning_rates()
            tr.single_stage_step()
        first = cpu_per_iter(step, 1)
        rest = cpu_per_iter(step, n)
        print(f"04 outer iteration, K_in={k_in}, amp={amp}, "
              f"{'no skipping' if occ_warmup else 'skipping from iteration 0 (untrained codes)'}: "
              f"first {first:.2f} CPU-s, then {rest:.2f} CPU-s per iteration ({n} iterations)", flush=True)


def piece_06(amp: str):
    """Notebook 06: units of its full mode (8 samples, 50 DDIM steps, 24-frame 64 px turntables)."""
    from minissd.data.cameras import CAMERA_RADIUS, orbit_poses
    from minissd.nerf.mesh import export_mesh
    from minissd.ssd.model import load_or_train
    from minissd.testtime import generate
    model = load_or_train("single-stage", get_preset("laptop"), progress=False)
    x_T = generate.noise(model, 8, torch.Generator().manual_seed(0))
    step = cpu_per_iter(lambda: generate.codes_from_noise(model, x_T, steps=2), 2) / 2
    codes = generate.codes_from_noise(model, x_T, steps=2)
    cams = orbit_poses(4, radius=CAMERA_RADIUS)
    r64 = cpu_per_iter(lambda: generate.render_views(model, codes[0], cams, res=64), 2) / 4
    r32 = cpu_per_iter(lambda: generate.render_views(model, codes[0], cams, res=32), 2) / 4
    mesh = cpu_per_iter(lambda: export_mesh(model, codes[0], resolution=128), 1)
    print(f"06 ({model.cfg.amp} model): DDIM step of 8 codes {step:.3f} CPU-s; render 64 px {r64:.3f}, "
          f"32 px {r32:.3f} CPU-s per image; mesh at 128^3 {mesh:.1f} CPU-s", flush=True)


def piece_09(amp: str):
    """Notebook 09: cost of the unposed search's grid and of one of its (probe or refine) steps."""
    import dataclasses
    from minissd.data.procedural import ensure_dataset
    from minissd.data.srn import SRNDataset
    from minissd.related import pose
    from minissd.related.codenerf import CodeNeRFConfig
    from minissd.related.codenerf_fit import load_or_train as load_codenerf
    from minissd.ssd.model import load_or_train
    from minissd.testtime.generate import render_views
    scene = SRNDataset(ensure_dataset("cars", "test", n_scenes=4, n_views=251, resolution=64, seed=0),
                       resolution=64)[0]
    image, K = scene["images"][64], scene["K"][64] if scene["K"].dim() == 3 else scene["K"]
    full = pose.PoseConfig()
    short = dataclasses.replace(full, probe_steps=2, steps=4)      # 4 starts x 2 + 2 steps
    longer = dataclasses.replace(full, probe_steps=4, steps=8)     # 4 starts x 4 + 4 steps
    for name, model in (("CodeNeRF", load_codenerf(CodeNeRFConfig.from_preset("laptop"))),
                        ("SSDNeRF", load_or_train("single-stage", get_preset("laptop"), progress=False))):
        run = lambda p: pose.unposed(model, image, K, p, generator=torch.Generator().manual_seed(0))  # noqa: E731
        out = []
        a = cpu_per_iter(lambda: out.append(run(short)), 1)
        b = cpu_per_iter(lambda: run(longer), 1)
        n_starts = len(out[0]["starts"])
        step = (b - a) / (n_starts * 2 + 2)
        r64 = cpu_per_iter(lambda: render_views(model, model.codes[0], scene["c2w"][:2], K, res=64), 1) / 2 \
            if name == "SSDNeRF" else float("nan")
        print(f"09 {name}: {n_starts} starts; a search step {step:.3f} CPU-s, grid and the rest "
              f"{a - step * (n_starts * 2 + 2):.2f} CPU-s; full search ({n_starts} x {full.probe_steps} + "
              f"{full.steps - full.probe_steps} steps) about "
              f"{a - step * (n_starts * 2 + 2) + step * (n_starts * full.probe_steps + full.steps - full.probe_steps):.0f} CPU-s"
              + (f"; a 64 px render {r64:.3f} CPU-s" if name == "SSDNeRF" else ""), flush=True)


def piece_10(amp: str, steps: int = 2):
    """Notebook 10: `steps` of the 50 DDIM steps of each sampler it runs, and 60 grid fits."""
    from minissd.data.procedural import ensure_dataset
    from minissd.data.srn import SRNDataset
    from minissd.related import completion, completion_eval, diffrf, voxel
    from minissd.related.diffrf_train import load_or_train_diffrf
    from minissd.ssd.model import load_or_train
    from minissd.testtime.generate import sample_codes
    cfg = diffrf.diffrf_preset("laptop")
    rf = load_or_train_diffrf(cfg)
    ssd = load_or_train("single-stage", get_preset("laptop"), progress=False)
    ds = SRNDataset(ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views, cfg.image_res, seed=0),
                    resolution=cfg.image_res)
    two = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("images", "c2w", "K")}
    sc = ds[1]
    ids = [0, 10, 20, 29, 39, 49]
    scene = {k: sc[k][ids] for k in ("images", "c2w", "K")}
    box = completion.parse_mask("back-half")
    g = lambda: torch.Generator().manual_seed(0)       # noqa: E731
    t = {
        "fit_grids, 60 steps of 2 objects": cpu_per_iter(lambda: voxel.fit_grids(
            two, diffrf.diffrf_preset("laptop", fit_iters=60, fit_batch=2), generator=g(), progress=False), 1),
        "DiffRF DDIM step, 4 grids": cpu_per_iter(lambda: diffrf.sample_grids(rf, 4, steps=steps, generator=g()), 1) / steps,
        "SSDNeRF DDIM step, 4 codes": cpu_per_iter(lambda: sample_codes(ssd, 4, steps=steps, generator=g()), 1) / steps,
        "DiffRF completion step, 3 proposals": cpu_per_iter(lambda: completion_eval.complete_object(
            rf, rf.codes[1:2], box, 3, steps=steps), 1) / steps,
        "SSDNeRF guided completion step, 3 proposals": cpu_per_iter(lambda: completion_eval.complete_object(
            ssd, ssd.codes[1:2], box, 3, steps=steps), 1) / steps,
        "DiffRF render of 5 fields x 6 views": cpu_per_iter(lambda: completion_eval.render_with_regions(
            rf, rf.codes[:5], scene, box), 1),
        "SSDNeRF render of 5 fields x 6 views": cpu_per_iter(lambda: completion_eval.render_with_regions(
            ssd, ssd.codes[:5], scene, box), 1),
        "image_to_volume step": cpu_per_iter(lambda: diffrf.image_to_volume(
            rf, sc["images"][:1], sc["c2w"][:1], sc["K"][:1], n=1, steps=steps, generator=g()), 1) / steps,
    }
    for k, v in t.items():
        print(f"10 {k}: {v:.3f} CPU-s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pieces", nargs="+", choices=["01", "04", "06", "09", "10"])
    ap.add_argument("--amp", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for p in args.pieces:
        globals()[f"piece_{p}"](args.amp)


if __name__ == "__main__":
    main()
