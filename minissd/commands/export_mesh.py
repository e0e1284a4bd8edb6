"""`python -m minissd export-mesh`: a coloured mesh (binary PLY or OBJ) of a training
scene's code, of new samples, or of a code saved by `sample` / `reconstruct`.

The command-line layer only: parse flags, check paths, call `minissd.nerf.mesh`."""
from __future__ import annotations

import os

import torch

from minissd.cli import SEED_MAX, non_negative, positive, writable_dir
from minissd.config import pick_device
from minissd.errors import UserError
from minissd.nerf.mesh import export_mesh
from minissd.ssd.model import Model


def add_mesh_flags(p, default_resolution: int = 256):
    """--resolution / --threshold / --format, shared with `sample --mesh` and
    `reconstruct --mesh`."""
    p.add_argument("--resolution", type=positive(1024), default=default_resolution,
                   help="marching-cubes grid cells per side over the box +-1.1")
    p.add_argument("--threshold", type=float, default=10.0,
                   help="density level of the surface (official SSDNeRF: 10)")
    p.add_argument("--format", choices=["ply", "obj"], default="ply",
                   help="binary PLY (vertex colours as uchar) or OBJ (`v x y z r g b`)")


def add_arguments(p):
    p.add_argument("--ckpt", required=True, help="model file written by `python -m minissd train`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--scene", type=non_negative(), help="training scene index of the model")
    src.add_argument("--sample", type=positive(10_000), metavar="N",
                     help="sample N new objects (DDIM, --seed) and mesh each")
    src.add_argument("--code", help="a codes.pt file (one code (3, C, R, R) or a batch)")
    p.add_argument("--seed", type=non_negative(SEED_MAX), default=0, help="sampling seed for --sample")
    p.add_argument("--out", required=True, help="output folder")
    add_mesh_flags(p)
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")


def load_codes(path: str, model) -> torch.Tensor:
    """Codes (B, 3, C, R, R) from a .pt file, checked against the model's code shape."""
    try:
        codes = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                      # noqa: BLE001 - any bad file
        raise UserError(f"--code {path}: cannot read it as a torch file ({e})") from None
    want = (3, model.cfg.code_ch, model.cfg.code_res, model.cfg.code_res)
    if not torch.is_tensor(codes) or tuple(codes.shape[-4:]) != want or codes.dim() not in (4, 5):
        shape = tuple(codes.shape) if torch.is_tensor(codes) else type(codes).__name__
        raise UserError(f"--code {path}: expected codes of shape {want} or (B, *{want}), got {shape}")
    return codes.reshape(-1, *want).float()


def write_meshes(model, codes, out: str, names, resolution=256, threshold=10.0, fmt="ply",
                 quiet=False) -> list[str]:
    """One mesh file per code (B, 3, C, R, R) in `out`, named `names[i].<fmt>`."""
    paths = []
    for name, code in zip(names, codes):
        path = os.path.join(out, f"{name}.{fmt}")
        try:
            mesh = export_mesh(model, code, path, resolution=resolution, threshold=threshold)
        except ValueError as e:
            raise UserError(f"{name}: {e}") from None
        paths.append(path)
        if not quiet:
            print(f"{path}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")
    return paths


def run(args):
    if not os.path.isfile(args.ckpt):
        raise UserError(f"--ckpt {args.ckpt}: no such file")
    if args.code is not None and not os.path.isfile(args.code):
        raise UserError(f"--code {args.code}: no such file")
    writable_dir(args.out, "--out")
    model = Model.load(args.ckpt, device=pick_device(args.device))
    if args.scene is not None:
        if args.scene >= len(model.codes):
            raise UserError(f"--scene {args.scene}: the model has {len(model.codes)} training scenes")
        codes = model.codes[args.scene:args.scene + 1]
        names = [f"scene_{args.scene:03d}" + (f"_{model.names[args.scene]}" if model.names else "")]
    elif args.sample is not None:
        from minissd.testtime.generate import sample_codes
        gen = torch.Generator(model.codes.device).manual_seed(args.seed)
        codes = sample_codes(model, args.sample, generator=gen, progress=True)
        names = [f"sample_{i:03d}" for i in range(args.sample)]
    else:
        codes = load_codes(args.code, model).to(model.codes.device)
        names = [f"code_{i:03d}" for i in range(len(codes))]
    write_meshes(model, codes, args.out, names, args.resolution, args.threshold, args.format)
    return 0
