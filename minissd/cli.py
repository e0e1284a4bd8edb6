"""The command line: `python -m minissd <command> --help`.

Each command lives in the module that implements it. That module defines
`add_arguments(parser)` and `run(args)`; this file only routes to it, importing the
module lazily so that `--help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# command -> (module, one-line help)
COMMANDS = {
    "quickstart": ("minissd.quickstart", "make a small dataset, train a small model on the CPU, write figures"),
    "make-data": ("minissd.procedural", "generate a procedural dataset (cars, chairs, tables) in the SRN layout"),
    "train": ("minissd.experiment", "train single-stage or two-stage SSDNeRF"),
    "sample": ("minissd.generate", "sample new objects from a trained model and render turntables"),
    "reconstruct": ("minissd.reconstruct", "reconstruct objects from posed views (guided sampling + finetuning)"),
    "evaluate": ("minissd.evaluate", "reconstruction / generation metrics, ablations A0-A3"),
    "plot": ("minissd.logs", "draw the training curves of a run folder's log.jsonl into curves.png"),
}


def build_parser(available_only: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m minissd",
        description="minissd: Single-Stage Diffusion NeRF, small and readable.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module_name, help_text) in COMMANDS.items():
        if available_only and importlib.util.find_spec(module_name) is None:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # parse the command name first, then let its module add its own arguments
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    p = argparse.ArgumentParser(prog=f"python -m minissd {argv[0]}",
                                description=COMMANDS[argv[0]][1])
    module.add_arguments(p)
    args = p.parse_args(argv[1:])
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
