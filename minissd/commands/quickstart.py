"""The quick start: the whole SSDNeRF story in one command, on a laptop CPU.

    python -m minissd quickstart [--out quickstart] [--iters N] [--preset laptop]

1. makes a small procedural cars dataset in the SRN layout and a contact sheet of it;
2. trains YOUR OWN single-stage model (eq. 4, Algorithm 1) for a few minutes, resumably,
   plots its training curves and samples it: a few minutes of training show the losses
   falling and blobs turning into car-coloured shapes, not yet cars;
3. samples new cars (DDIM) from the SHIPPED model of the same preset (assets/models: 1000
   iterations on 64 cars, 42 minutes of training on our 2-core machine: `wall_s` in
   assets/models/manifest.json) and renders turntables;
4. reconstructs an unseen test car from ONE view with the shipped model (guided sampling
   + finetuning), and prints where everything is, saying which model made which file.

Without a shipped model for the preset (e.g. `--preset gpu`), steps 3-4 use your own.
Run it again and it continues where it stopped (the run folder holds a checkpoint).
"""
from __future__ import annotations

import os
import time

from PIL import Image
import numpy as np
import torch

from minissd.cli import positive
from minissd.config import get_preset, pick_device
from minissd.data.cameras import input_view_ids
from minissd.data.procedural import ensure_dataset
from minissd.data.srn import SRNDataset
from minissd.ssd.model import Model, find_model, train_run
from minissd.testtime.generate import sample_codes, save_gif, save_strip, turntable
from minissd.testtime.reconstruct import reconstruct_scene, save_figure
from minissd.viz import image_grid, plot_training_curves


def save_png(array: np.ndarray, path: str) -> str:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def contact_sheet(data_dir: str, path: str, n_scenes: int = 16, views=(0, 1, 2, 3)) -> str:
    """Rows of scenes, columns of views: a PNG of what the dataset looks like."""
    ds = SRNDataset(data_dir, views=list(views))
    imgs = [ds[i]["images"][v] for i in range(min(n_scenes, len(ds))) for v in range(len(views))]
    return save_png(image_grid(imgs, nrow=len(views) * 4), path)


def add_arguments(p):
    p.add_argument("--out", default="quickstart", help="output folder")
    p.add_argument("--preset", default="laptop", choices=["smoke", "laptop", "gpu", "paper"],
                   help="config preset (config.py)")
    p.add_argument("--iters", type=positive(10**9), default=150,
                   help="outer iterations of your own training run")
    p.add_argument("--scenes", type=positive(100_000), default=32, help="training cars")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")


def run(args):

    t_start = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    device = pick_device(args.device)
    cfg = get_preset(args.preset, iters=args.iters, data_scenes=args.scenes)
    print(f"[1/5] dataset: {args.scenes} procedural cars x {cfg.data_views} views at "
          f"{cfg.image_res}px (cached after the first time)")
    train_dir = ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views, cfg.image_res)
    test_dir = ensure_dataset("cars", "test", 4, 251 if cfg.image_res >= 128 else 128, cfg.image_res)
    sheet = contact_sheet(train_dir, os.path.join(out, "dataset.png"))

    print(f"[2/5] your own single-stage training, {cfg.iters} outer iterations on {device} "
          "(Ctrl-C is safe: run again to resume)")
    tr = train_run(cfg, train_dir, "single-stage", os.path.join(out, "run"), device=device)
    own = Model.from_trainer(tr, meta={"command": "python -m minissd quickstart"})
    model_path = own.save(os.path.join(out, "run", "model.pt"))
    curves = plot_training_curves(tr.log, os.path.join(out, "training_curves.png"))
    gen = torch.Generator(own.codes.device).manual_seed(0)
    own_samples = save_strip(turntable(own, sample_codes(own, 4, generator=gen), n_frames=6),
                             os.path.join(out, "samples_your_model.png"))

    shipped_cfg = get_preset(args.preset)
    shipped = find_model("cars", "single-stage", shipped_cfg)
    model = Model.load(shipped, device=device) if shipped else own
    who = (f"the shipped {args.preset} model ({shipped_cfg.iters} iterations on "
           f"{shipped_cfg.data_scenes} cars)" if shipped else "your own model")
    print(f"[3/5] sampling 8 new cars from {who} (DDIM) and rendering turntables")
    gen = torch.Generator(model.codes.device).manual_seed(0)
    codes = sample_codes(model, 8, generator=gen, progress=True)
    frames = turntable(model, codes, n_frames=12, progress=True)          # (8, 12, H, W, 3)
    samples = save_strip(frames[:, ::2], os.path.join(out, "samples.png"))
    gif = save_gif(frames[0], os.path.join(out, "sample_0.gif"))

    print(f"[4/5] reconstructing an unseen test car from one view with {who}")
    scene = SRNDataset(test_dir, resolution=cfg.image_res)[0]
    n_views = scene["images"].shape[0]
    res = reconstruct_scene(model, scene, input_view_ids(n_views, 1), max_eval=6,
                            generator=torch.Generator(model.codes.device).manual_seed(0))
    recon = save_figure(res, os.path.join(out, "reconstruction.png"),
                        title=f"1-view reconstruction ({who}): mean PSNR "
                              f"{float(res['psnr'].mean()):.2f} dB on {len(res['psnr'])} novel views")

    print(f"[5/5] done in {time.time() - t_start:.0f} s. Look at:")
    for name, path in (("dataset contact sheet", sheet), ("training curves (yours)", curves),
                       (f"samples after {cfg.iters} iterations (yours)", own_samples),
                       (f"samples ({'shipped' if shipped else 'yours'})", samples),
                       (f"one sample, animated ({'shipped' if shipped else 'yours'})", gif),
                       (f"1-view reconstruction ({'shipped' if shipped else 'yours'})", recon),
                       ("your model (for sample/reconstruct)", model_path)):
        print(f"  {name:32s} {path}")
    return 0
