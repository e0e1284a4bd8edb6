"""The command line: `python -m minissd <command> --help`.

Each command has its own module in `minissd/commands/` (named after it) defining
`add_arguments(parser)` and `run(args)`; this file only routes to it, importing the
module lazily so that `--help` is fast.

Known user errors (a bad argument, data folder or checkpoint; a full disk; a locked run
folder; a diverged run; running out of memory) print one line naming the file or
argument and exit with status 1; Ctrl-C prints one line saying what was kept and how to
go on (a command's `interrupted(args, argv)`) and exits with 130; `--debug` shows the
traceback instead. The argument types below (`positive`,
`non_negative`) refuse zero, negative and absurd sizes at parse time.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import importlib
import importlib.util
import os
import sys
import tempfile

from minissd.errors import TrainingDiverged, UserError
from minissd.runtime import set_threads

# command -> (module, one-line help)
COMMANDS = {
    "quickstart": ("minissd.commands.quickstart", "make a small dataset, train a small model on the CPU, write figures"),
    "make-data": ("minissd.commands.make_data", "generate a procedural dataset (cars, chairs, tables) in the SRN layout"),
    "train": ("minissd.commands.train", "train single-stage or two-stage SSDNeRF"),
    "sample": ("minissd.commands.sample", "sample new objects from a trained model and render turntables"),
    "reconstruct": ("minissd.commands.reconstruct", "reconstruct objects from posed views (guided sampling + finetuning)"),
    "export-mesh": ("minissd.commands.export_mesh", "marching cubes on a scene's density: a coloured PLY/OBJ mesh"),
    "evaluate": ("minissd.commands.evaluate", "reconstruction / generation metrics, ablations A0-A3"),
    "plot": ("minissd.commands.plot", "draw the training curves of a run folder's log.jsonl into curves.png"),
    "complete": ("minissd.commands.complete", "masked completion of objects with a DiffRF or SSDNeRF prior"),
}

EXAMPLES = {
    "quickstart": "python -m minissd quickstart --preset smoke --iters 50 --out quickstart",
    "make-data": "python -m minissd make-data --category cars --split train --scenes 64 --views 50 "
                 "--out data/cars_train",
    "train": "python -m minissd train --preset laptop --data data/cars_train --out runs/ss\n"
             "  python -m minissd train --preset laptop --data data/cars_train --out runs/ss --resume\n"
             "  python -m minissd train --preset smoke --set code_res=16 --set lr_code=5e-3 "
             "--data data/cars_train --out runs/small",
    "sample": "python -m minissd sample --ckpt runs/ss/model.pt --n 8 --out samples/",
    "reconstruct": "python -m minissd reconstruct --ckpt runs/ss/model.pt --data data/cars_test "
                   "--input-views 64 --out recon/",
    "export-mesh": "python -m minissd export-mesh --ckpt runs/ss/model.pt --scene 0 --out meshes/\n"
                   "  python -m minissd export-mesh --ckpt runs/ss/model.pt --sample 4 --seed 1 --out meshes/\n"
                   "  python -m minissd export-mesh --ckpt runs/ss/model.pt --code samples/codes.pt "
                   "--format obj --resolution 128 --out meshes/",
    "evaluate": "python -m minissd evaluate --ckpt runs/ss/model.pt --data data/cars_test "
                "--task recon --ablation A0 --json a0.json\n"
                "  python -m minissd evaluate --ckpt runs/ss/model.pt --data data/cars_test "
                "--task recon --test-set lambda_gd=30 --json a0_gd30.json",
    "plot": "python -m minissd plot runs/ss\n  python -m minissd plot runs/ss --tensorboard",
    "complete": "python -m minissd complete --ckpt runs/diffrf/model.pt --data data/cars_test "
                "--mask back-half --out completion/ --json completion.json",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows every flag's default (unless its help already says it, or there is
    none to show: a switch, a required flag), and the examples as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if "default" not in text and not empty and action.option_strings and not action.required:
            text += f" (default: {action.default})"
        return text


def version() -> str:
    """The installed package's version (package metadata), else minissd.__version__."""
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as meta_version
        return meta_version("minissd")
    except (ImportError, PackageNotFoundError):
        from minissd import __version__
        return __version__


# ---------------------------------------------------------------- argument types ----
SEED_MAX = 2**63 - 1            # torch.manual_seed takes a signed 64-bit seed


def positive(at_most: int | None = None):
    """An argparse type: an integer >= 1 (and <= at_most)."""
    return _int_type(1, at_most)


def non_negative(at_most: int | None = None):
    """An argparse type: an integer >= 0 (and <= at_most)."""
    return _int_type(0, at_most)


def _int_type(low: int, high: int | None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v}: must be at least {low}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"{v}: must be at most {high}")
        return v
    parse.__name__ = "integer"
    return parse


def require_positive(args, *names) -> None:
    """UserError for the first optional integer argument in `names` that is given and
    below 1 (for flags whose type the command declares as plain int)."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} {v}: must be at least 1")


def distinct_views(ids, flag: str = "--input-views") -> list:
    """View ids given once each (`--input-views 0 0 0` is one view, not three)."""
    dup = sorted({v for v in ids if list(ids).count(v) > 1})
    if dup:
        raise UserError(f"{flag} {' '.join(map(str, ids))}: view {dup} given more than once")
    return list(ids)


def check_steps(steps, cfg, flag: str = "--steps") -> None:
    """DDIM steps a model can take: at most its T diffusion steps."""
    if steps is not None and steps > cfg.T:
        raise UserError(f"{flag} {steps}: more DDIM steps than the model's T={cfg.T}")


def test_settings(model, args):
    """The model's test-time settings with --test-set, --steps (recon_steps) and
    --lambda-gd applied, validated against the model: what the run will really use, and
    what its output records."""
    check_steps(getattr(args, "steps", None), model.cfg)
    steps = [f"recon_steps={args.steps}"] if getattr(args, "steps", None) else []
    t = model.test.with_overrides(list(args.test_set) + steps)
    if args.lambda_gd is not None:
        t = replace(t, lambda_gd=args.lambda_gd).validate(where="--lambda-gd")
    return t.validate(model.cfg, where="--test-set")


# -------------------------------------------------------------- output locations ----
def writable_dir(path: str, flag: str) -> str:
    """Create folder `path` if needed and check a file can be written in it, before any
    work is done; UserError naming `flag` otherwise."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".tmp-probe-"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def writable_file(path: str, flag: str) -> str:
    """Check that file `path` can be written (its folder exists or can be made, it is
    not a folder); UserError naming `flag` otherwise."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder, expected a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: file is not writable")
    writable_dir(os.path.dirname(os.path.abspath(path)), flag)
    return path


def not_an_input(outputs, inputs: dict) -> None:
    """No command writes over its own input: UserError when one of the files it will
    write (`outputs`: {flag or description: path}) is one of `inputs` ({flag: path})."""
    def same(a: str, b: str) -> bool:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.realpath(a) == os.path.realpath(b)
    for out_flag, out in outputs.items():
        for in_flag, path in inputs.items():
            if out and path and same(out, path):
                raise UserError(f"{out_flag} {out}: is the {in_flag} input, which it would "
                                "overwrite; choose another name")


# ------------------------------------------------------------------------ routing ----
def build_parser(available_only: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minissd",
        description="minissd: Single-Stage Diffusion NeRF, small and readable.",
        epilog="Run `python -m minissd <command> --help` for a command's flags.")
    parser.add_argument("--version", action="version", version=f"minissd {version()}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        if available_only and importlib.util.find_spec(module_name) is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of one command: its module's flags, --debug, help with defaults."""
    module = importlib.import_module(COMMANDS[name][0])
    p = argparse.ArgumentParser(prog=f"python -m minissd {name}", description=COMMANDS[name][1],
                                formatter_class=HelpFormatter,
                                epilog="example:\n  " + EXAMPLES[name] if name in EXAMPLES else None)
    module.add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument("--threads", help="CPU threads: 'auto' (the cores other processes leave free, "
                   "re-checked every few seconds), 'torch' (PyTorch's default) or a number; "
                   "default $MINISSD_THREADS or auto")
    return p


def user_error_types() -> tuple:
    """Exceptions the command line reports as one line: bad input, bad checkpoint, disk."""
    return (UserError, ValueError, OSError, TrainingDiverged)


def out_of_memory(e: BaseException) -> bool:
    """A CPU or GPU allocation failure (MemoryError, torch's OutOfMemoryError, or the
    allocator's RuntimeError)."""
    text = str(e)
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                         or "not enough memory" in text))


def error_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    if out_of_memory(e):
        first = (str(e).splitlines() or [""])[0][:200]
        return ("out of memory" + (f" ({first})" if first else "") + ": lower the sizes that "
                "scale memory (rays_per_scene, code_res, scenes_per_batch, image_res, n_samples; "
                "--scenes, --res), or use a machine with more memory")
    return str(e) or type(e).__name__


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # parse the command name first, then let its module add its own arguments
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    p = command_parser(argv[0])
    args = p.parse_args(argv[1:])
    debug, threads = args.__dict__.pop("debug"), args.__dict__.pop("threads")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    try:
        if threads is not None:
            set_threads(threads)                     # else as set when minissd was imported
        return module.run(args) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        note = getattr(module, "interrupted", None)
        print("interrupted: " + (note(args, argv) if note else "no output is left half-written; "
                                 "run the command again"), file=sys.stderr)
        return 130
    except BaseException as e:
        if debug or not (isinstance(e, user_error_types()) or out_of_memory(e)):
            raise
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
