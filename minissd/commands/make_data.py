"""`python -m minissd make-data`: write a dataset in the SRN layout (rgb/, pose/,
intrinsics.txt per scene), either procedural objects (`minissd.data.procedural`) or real
meshes from pybullet_data (`minissd.data.pybullet_source`, optional extra `objects`).

The command-line layer only: parse flags, check the output folder, call the generator.
The output folder always holds one whole dataset: a non-empty --out is refused unless
--overwrite is given, and then the new dataset is written beside it and swapped in.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
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
    that out_dir always holds one whole dataset (the old one until the swap). A swap
    killed half-way is finished or rolled back by the next call (`recover`)."""
    out_dir = os.path.normpath(out_dir)
    recover(out_dir)
    tag = uuid.uuid4().hex[:8]
    tmp, old = f"{out_dir}.tmp-{tag}", f"{out_dir}.old-{tag}"
    os.makedirs(tmp)
    live = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(live, fcntl.LOCK_EX)            # marks tmp as being written (see recover)
        write(tmp)
        if os.path.exists(out_dir):
            os.rename(out_dir, old)                 # old-TAG exists only once tmp-TAG is whole
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if os.path.isdir(old) and not os.path.lexists(out_dir):
                os.rename(old, out_dir)             # roll back: never lose the old dataset
            raise
    finally:
        os.close(live)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _in_use(folder: str) -> bool:
    """True while another make-data holds folder's lock (it is writing there)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def recover(out_dir: str) -> list[str]:
    """Finish or roll back a swap of write_replacing killed between its two renames, and
    remove the leftovers of killed writes (out_dir.tmp-*, out_dir.old-*). Returns what
    was done, one line each (also printed)."""
    out_dir = os.path.normpath(out_dir)
    parent, base = os.path.split(os.path.abspath(out_dir))
    names = os.listdir(parent) if os.path.isdir(parent) else []
    left = [os.path.join(parent, n) for n in sorted(names)
            if n.startswith((base + ".tmp-", base + ".old-"))
            and not _in_use(os.path.join(parent, n))]
    done = []
    olds = sorted((p for p in left if ".old-" in p[len(parent) + len(base):]), key=os.path.getmtime)
    if not os.path.lexists(out_dir) and olds:
        tag = olds[-1].rsplit(".old-", 1)[1]
        new = f"{out_dir}.tmp-{tag}"
        src = new if new in left else olds[-1]       # the new copy was whole: finish the swap
        os.rename(src, out_dir)
        done.append(f"{out_dir}: restored from {src} (a replacement killed half-way "
                    f"{'finished' if src == new else 'rolled back'})")
        left.remove(src)
    for path in left:
        shutil.rmtree(path, ignore_errors=True)
        done.append(f"removed {path} (left by a killed make-data)")
    for line in done:
        print(line, file=sys.stderr)
    return done


def check_out(out: str, overwrite: bool) -> str:
    """--out must be a folder that is empty, missing, or explicitly to be replaced; a
    symbolic link stands for the folder it points to (the link is kept). Returns the
    folder to write; a swap killed half-way there is first recovered."""
    if not out.strip():
        raise UserError(f"--out {out!r}: empty path; name a folder (or leave --out out to use "
                        "the cache)")
    if os.path.islink(out):
        out = os.path.realpath(out)
    recover(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out}: exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise UserError(f"--out {out}: folder is not empty (it would mix two datasets); "
                        "pass --overwrite to replace it, or choose another folder")
    writable_dir(os.path.dirname(os.path.abspath(out)), "--out")
    return out


def interrupted(args, argv) -> str:
    """What Ctrl-C left behind (cli.main)."""
    where = f"--out {args.out}" if args.out else "the cache"
    return (f"{where} is as it was before (the partial new dataset is removed now or by the "
            "next make-data); run the command again")


def run(args):
    views = args.views or (50 if args.split == "train" else 251)
    if args.source == "pybullet":
        out = args.out if args.out is not None else os.path.join(
            cache_dir(), "data", f"pybullet_{args.object.replace(',', '+')}_{args.split}_n{args.scenes}"
            f"_v{views}_r{args.resolution}_s{args.seed}_f{pybullet_source.FORMAT}")
        out = check_out(out, args.overwrite)
        write_replacing(out, lambda d: pybullet_source.generate(
            d, args.object, args.split, args.scenes, views, args.resolution, args.seed))
        n = len([d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))])
        print(f"wrote {n} pybullet scenes ({args.object}) x {views} views to {out}")
        return 0
    if args.out is not None:
        path = write_replacing(check_out(args.out, args.overwrite), lambda d: procedural.generate(
            d, args.category, args.split, args.scenes, views, args.resolution, args.seed))
    else:
        path = procedural.ensure_dataset(args.category, args.split, args.scenes, views,
                                         args.resolution, args.seed)
    link = f"{args.out} -> " if args.out and os.path.normpath(args.out) != path else ""
    print(f"wrote {args.scenes} {args.category} scenes x {views} views to {link}{path}")
    return 0
