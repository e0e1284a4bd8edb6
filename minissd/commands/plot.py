"""`python -m minissd plot RUN_DIR`: draw a run's training curves (and TensorBoard scalars).

The command-line layer only: parse flags, check paths, call `minissd.ssd.logs`."""
from __future__ import annotations

import os

from minissd.cli import not_an_input, writable_file
from minissd.ssd.logs import log_path, read_log, write_tensorboard
from minissd.viz import plot_training_curves


def add_arguments(p):
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding log.jsonl (or the log file)")
    p.add_argument("--out", help="image to write, or a folder to write curves.png into "
                   "(default: RUN_DIR/curves.png)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars to RUN_DIR/tensorboard/ (pip install tensorboard)")


def run(args):
    path = log_path(args.run_dir)
    if not os.path.isfile(path):
        raise SystemExit(f"{args.run_dir}: no log.jsonl there (is it a run folder of "
                         "`python -m minissd train --out ...`?)")
    try:
        log = read_log(path)
    except ValueError as e:
        raise SystemExit(str(e))
    if not log:
        raise SystemExit(f"{path} is empty: the run has not logged an iteration yet")
    folder = os.path.dirname(os.path.abspath(path))
    out = args.out or os.path.join(folder, "curves.png")
    if os.path.isdir(out):                              # --out EXISTING_DIR: curves.png inside
        out = os.path.join(out, "curves.png")
    elif not os.path.splitext(out)[1]:
        out += ".png"                                   # what matplotlib would write; say so
    not_an_input({"--out": out}, {"RUN_DIR's log": path})
    writable_file(out, "--out")
    last = log[-1]
    plot_training_curves(log, out, title=f"{os.path.basename(folder)}: {len(log)} iterations, "
                                         f"last phase {last.get('phase', '?')}")
    print(out)
    if args.tensorboard:
        try:
            tb = write_tensorboard(log, os.path.join(folder, "tensorboard"))
        except ImportError:
            raise SystemExit("--tensorboard needs the tensorboard package: pip install tensorboard "
                             f"(the curves are in {out})")
        print(f"{tb}  (tensorboard --logdir {tb})")
    return 0
