"""`python -m minissd make-data`: write a dataset in the SRN layout (rgb/, pose/,
intrinsics.txt per scene), either procedural objects (`minissd.data.procedural`) or real
meshes from pybullet_data (`minissd.data.pybullet_source`, optional extra `objects`).

The command-line layer only: parse flags, check the output folder, call the generator.
The output folder always holds one whole dataset: a non-empty --out is refused unless
--overwrite is given, and then the new dataset is written beside it and swapped in.
"""
from __future__ import annotations

import os
import shutil
import uuid

from minissd.cli import non_negative, positive, writable_dir
from minissd.config import cache_dir
from minissd.data import procedural, pybullet_source
from minissd.errors import UserError


def add_arguments(parser):
    parser.add_argument("--source", choices=("procedural", "pybullet"), default="procedural",
                        help="procedural objects (--category), or pybullet_data meshes (--object)")
    parser.add_argument("--category", choices=procedural.CATEGORIES, default="cars",
                        help="--source procedural: object category")
    parser.add_argument("--object", default="duck",
                        help=f"--source pybullet: {', '.join(pybullet_source.OBJECTS)} (comma-separated "
                             f"for several scenes), or {pybullet_source.RANDOM_URDFS} (--scenes of them)")
    parser.add_argument("--split", choices=("train", "test"), default="train",
                        help="train: random views on the sphere; test: a spiral")
    parser.add_argument("--scenes", type=positive(100_000), default=32, help="number of objects")
    parser.add_argument("--views", type=positive(10_000), default=None,
                        help="views per object (default: 50 train, 251 test, like SRN)")
    parser.add_argument("--resolution", type=positive(1024), default=64, help="image size in pixels")
    parser.add_argument("--seed", type=non_negative(), default=0, help="dataset seed")
    parser.add_argument("--out", default=None,
                        help="output folder (default: the cache, see MINISSD_CACHE)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out folder (written beside it, then swapped)")


def write_replacing(out_dir: str, write) -> str:
    """write(folder) into a new folder beside out_dir, then swap it in for out_dir, so
    that out_dir always holds one whole dataset (the old one until the swap)."""
    out_dir = os.path.normpath(out_dir)
    tag = uuid.uuid4().hex[:8]
    tmp, old = f"{out_dir}.tmp-{tag}", f"{out_dir}.old-{tag}"
    try:
        write(tmp)
        if os.path.exists(out_dir):
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def check_out(out: str, overwrite: bool) -> None:
    """--out must be a folder that is empty, missing, or explicitly to be replaced."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise UserError(f"--out {out}: folder is not empty (it would mix two datasets); "
                        "pass --overwrite to replace it, or choose another folder")
    writable_dir(os.path.dirname(os.path.abspath(out)), "--out")


def run(args):
    views = args.views or (50 if args.split == "train" else 251)
    if args.source == "pybullet":
        out = args.out or os.path.join(
            cache_dir(), "data", f"pybullet_{args.object.replace(',', '+')}_{args.split}_n{args.scenes}"
            f"_v{views}_r{args.resolution}_s{args.seed}_f{pybullet_source.FORMAT}")
        check_out(out, args.overwrite)
        write_replacing(out, lambda d: pybullet_source.generate(
            d, args.object, args.split, args.scenes, views, args.resolution, args.seed))
        n = len([d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))])
        print(f"wrote {n} pybullet scenes ({args.object}) x {views} views to {out}")
        return 0
    if args.out:
        check_out(args.out, args.overwrite)
        path = write_replacing(args.out, lambda d: procedural.generate(
            d, args.category, args.split, args.scenes, views, args.resolution, args.seed))
    else:
        path = procedural.ensure_dataset(args.category, args.split, args.scenes, views,
                                         args.resolution, args.seed)
    print(f"wrote {args.scenes} {args.category} scenes x {views} views to {path}")
    return 0
