"""`python -m minissd sample`: unconditional samples of a trained model, as turntables.

The command-line layer only: parse flags, check paths, call `minissd.testtime.generate`."""
from __future__ import annotations

import json
import os

import torch

from minissd.cli import SEED_MAX, check_steps, non_negative, not_an_input, positive, writable_dir
from minissd.commands.export_mesh import add_mesh_flags, write_meshes
from minissd.config import pick_device
from minissd.errors import TrainingDiverged
from minissd.ssd.model import Model
from minissd.testtime.generate import (
    nearest_training,
    sample_codes,
    save_gif,
    save_strip,
    turntable,
)


def add_arguments(p):
    p.add_argument("--ckpt", required=True, help="model file written by `python -m minissd train`")
    p.add_argument("--n", type=positive(10_000), default=8, help="number of samples")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=positive(100_000),
                   help="DDIM steps (default: the model's cfg.ddim_steps)")
    p.add_argument("--frames", type=positive(3600), default=24, help="turntable frames")
    p.add_argument("--res", type=positive(2048), help="render resolution (default: training images)")
    p.add_argument("--seed", type=non_negative(SEED_MAX), default=0, help="sampling seed")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--mesh", action="store_true",
                   help="also write a coloured mesh of every sample (sample_*.ply; export-mesh)")
    add_mesh_flags(p, default_resolution=128)


def run(args):
    if not os.path.isfile(args.ckpt):
        raise SystemExit(f"--ckpt {args.ckpt}: no such file")
    outputs = ["codes.pt", "nearest.json", "turntables.png"] + [f"sample_{i:03d}.gif" for i in range(args.n)]
    not_an_input({f"--out ... {f}": os.path.join(args.out, f) for f in outputs}, {"--ckpt": args.ckpt})
    model = Model.load(args.ckpt, device=pick_device(args.device))
    check_steps(args.steps, model.cfg)
    writable_dir(args.out, "--out")
    gen = torch.Generator(model.codes.device).manual_seed(args.seed)
    codes = sample_codes(model, args.n, args.steps, gen, progress=True)
    if not torch.isfinite(codes).all():
        raise TrainingDiverged(f"{args.ckpt}: sampling produced NaN/inf codes; nothing written")
    frames = turntable(model, codes, args.frames, res=args.res, progress=True)   # (n, F, H, W, 3)
    for i in range(args.n):
        save_gif(frames[i], os.path.join(args.out, f"sample_{i:03d}.gif"))
    step = max(1, args.frames // 8)
    save_strip(frames[:, ::step], os.path.join(args.out, "turntables.png"))
    idx, dist = nearest_training(model, codes)
    torch.save(codes.cpu(), os.path.join(args.out, "codes.pt"))
    with open(os.path.join(args.out, "nearest.json"), "w") as f:
        json.dump([{"sample": i, "nearest": model.names[j] if model.names else int(j),
                    "code_mse": round(float(d), 6)} for i, (j, d) in enumerate(zip(idx, dist))],
                  f, indent=1)
    if args.mesh:
        write_meshes(model, codes, args.out, [f"sample_{i:03d}" for i in range(args.n)],
                     args.resolution, args.threshold, args.format)
    print(f"wrote {args.n} samples to {args.out} (turntables.png, sample_*.gif, codes.pt, "
          "nearest.json" + (f", sample_*.{args.format}" if args.mesh else "") + ")")
    return 0
