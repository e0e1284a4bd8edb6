"""`python -m minissd train`: train single-stage SSDNeRF or the two-stage baseline into a run folder.

The command-line layer only: parse flags, check paths, call `minissd.ssd.model`."""
from __future__ import annotations

from dataclasses import replace
import json
import os
import shlex
import time

from minissd.cli import SEED_MAX, non_negative, not_an_input, positive, writable_dir
from minissd.config import Config, get_preset, load_config_file, parse_override
from minissd.overrides import field_kinds, parse_pairs
from minissd.ssd import checkpoint as ckpt
from minissd.ssd import distributed
from minissd.ssd.model import Model, train_run
from minissd.ssd.train import MODES


def add_arguments(p):
    p.add_argument("--model", default="ssdnerf", choices=["ssdnerf", "codenerf", "diffrf"],
                   help="ssdnerf (this package), or a baseline of minissd/related/: the CodeNeRF "
                        "auto-decoder (codenerf.py) or the DiffRF voxel diffusion (diffrf.py)")
    p.add_argument("--preset", default="laptop", choices=["smoke", "laptop", "gpu", "paper"],
                   help="starting config (config.py); --config and --set change it")
    p.add_argument("--mode", default="single-stage", choices=list(MODES),
                   help="single-stage SSDNeRF, or the two-stage baseline")
    p.add_argument("--data", required=True, help="SRN-format folder of training scenes")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.jsonl, "
                   "config.json, model.pt)")
    p.add_argument("--iters", type=positive(10**9),
                   help="outer iterations (per stage for two-stage); default: the preset's")
    p.add_argument("--views-per-scene", type=non_negative(10**6),
                   help="fixed views per scene (3 = sparse); 0 = all; default: the preset's")
    p.add_argument("--config", metavar="JSON", help="a JSON file of config fields, "
                   'e.g. {"code_res": 16}, applied on top of the preset')
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field, type-checked (repeatable): "
                        "--set code_res=16 --set lr_code=5e-3")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--seed", type=non_negative(SEED_MAX), help="random seed; default: the preset's (0)")


def config_from_args(args) -> Config:
    """preset, then --config FILE, then each --set, then --iters/--views-per-scene/--seed;
    every value type-checked and the result validated."""
    over = load_config_file(args.config) if args.config else {}
    over.update(parse_override(s) for s in args.set)
    over.update({k: v for k, v in (("iters", args.iters), ("views_per_scene", args.views_per_scene),
                                   ("seed", args.seed)) if v is not None})
    name = over.pop("name", None)                 # get_preset's own first argument
    cfg = get_preset(args.preset, **over)
    return cfg if name is None else replace(cfg, name=name).validate()


def write_config(out: str, cfg: Config) -> None:
    ckpt.write_atomic(os.path.join(out, "config.json"),
                      lambda f: f.write(json.dumps(cfg.to_dict(), indent=1) + "\n"), binary=False)


def interrupted(args, argv) -> str:
    """What Ctrl-C left behind, and the command that continues the run (cli.main)."""
    path = os.path.join(args.out, "checkpoint.pt")
    again = "python -m minissd " + " ".join(shlex.quote(a) for a in argv)
    again += "" if "--resume" in argv else " --resume"
    try:
        sd = ckpt.load(path) if os.path.exists(path) else {}
        it = sd.get("iter", sd.get("it"))        # CodeNeRF's checkpoint counts in "it"
    except ValueError:
        it = None
    if it is None:
        return (f"no checkpoint was written yet in {args.out} (one comes every ckpt_every "
                "iterations): run the command again")
    return f"{path} (iteration {it}) is kept; continue with: {again}"


def run(args):
    if getattr(args, "model", "ssdnerf") == "codenerf":
        return run_codenerf(args)
    if getattr(args, "model", "ssdnerf") == "diffrf":      # the DiffRF baseline: its own trainer
        return run_diffrf(args)
    cfg = config_from_args(args)
    if not os.path.isdir(args.data):
        raise SystemExit(f"--data {args.data}: no such folder")
    not_an_input({"--out": args.out}, {"--data": args.data})
    not_an_input({"--out ... config.json": os.path.join(args.out, "config.json")},
                 {"--config": args.config})
    writable_dir(args.out, "--out")
    # torchrun: rank 0 alone locks, writes and prints (minissd/ssd/distributed.py)
    with distributed.quiet_unless_main(), distributed.run_lock(args.out) as lock:
        if os.path.exists(os.path.join(args.out, "checkpoint.pt")) and not args.resume:
            raise SystemExit(f"{args.out} already holds a checkpoint: pass --resume to continue it, "
                             "or choose another --out")
        t0 = time.time()
        # config.json is written only once data, config and checkpoint are all accepted
        tr = train_run(cfg, args.data, args.mode, args.out, device=args.device, resume=args.resume,
                       lock=lock, before_training=lambda tr: distributed.is_main() and write_config(args.out, cfg))
        tr = distributed.for_model(tr)             # torchrun: all codes on rank 0, None elsewhere
        if tr is None:
            return 0
        flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                 for k, v in vars(args).items() if v not in (None, False, [])]
        model = Model.from_trainer(tr, meta={"command": "python -m minissd train " + " ".join(flags),
            "wall_s_last_session": round(time.time() - t0, 1), "device": str(tr.device)})
        path = model.save(os.path.join(args.out, "model.pt"))
    print(f"checkpoint: {tr.ckpt_path()}\nmodel for sampling/reconstruction: {path}\n"
          f"log: {os.path.join(args.out, 'log.jsonl')}\nconfig: {os.path.join(args.out, 'config.json')}")


def run_codenerf(args):
    """--model codenerf: the CodeNeRF baseline on the preset's training data (same cars)."""
    from minissd.related.codenerf import CodeNeRFConfig
    from minissd.related.codenerf_fit import train_codenerf
    over = parse_pairs(args.set, field_kinds(CodeNeRFConfig), "--set")
    over.update({k: v for k, v in (("iters", args.iters), ("views_per_scene", args.views_per_scene),
                                   ("seed", args.seed)) if v is not None})
    cfg = CodeNeRFConfig.from_preset(args.preset, **over)
    check_baseline_run(args)
    t0 = time.time()
    model = train_codenerf(cfg, args.data, args.out, device=args.device, resume=args.resume)
    print(f"CodeNeRF model: {os.path.join(args.out, 'model.pt')} ({time.time() - t0:.0f} s, "
          f"last PSNR {model.log[-1]['psnr']:.2f} dB on training rays)")


def run_diffrf(args):
    """--model diffrf: the DiffRF baseline (fit the voxel grids, then the 3D UNet) on the
    preset's training data; --mode does not apply, --set sets DiffRFConfig fields."""
    from minissd.related.diffrf import DiffRFConfig, diffrf_preset
    from minissd.related.diffrf_train import train_diffrf
    over = parse_pairs(args.set, field_kinds(DiffRFConfig), "--set")
    over.update({k: v for k, v in (("iters", args.iters), ("seed", args.seed),
                                   ("views_per_scene", args.views_per_scene)) if v is not None})
    cfg = diffrf_preset(args.preset, **over)
    check_baseline_run(args)
    t0 = time.time()
    tr = train_diffrf(cfg, args.data, args.out, device=args.device or "cpu", resume=args.resume)
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
             for k, v in vars(args).items() if v not in (None, False, [])]
    path = tr.model({"command": "python -m minissd train " + " ".join(flags),
                     "wall_s_last_session": round(time.time() - t0, 1)}).save(
        os.path.join(args.out, "model.pt"))
    print(f"checkpoint: {tr.ckpt_path()}\nmodel: {path}")
    return 0


def check_baseline_run(args) -> None:
    """The run-folder checks of a baseline's training (CodeNeRF, DiffRF), before anything
    is written: --data exists and is not --out, --out is writable, and an existing
    checkpoint is continued only with --resume."""
    if not os.path.isdir(args.data):
        raise SystemExit(f"--data {args.data}: no such folder")
    not_an_input({"--out": args.out}, {"--data": args.data})
    writable_dir(args.out, "--out")
    if os.path.exists(os.path.join(args.out, "checkpoint.pt")) and not args.resume:
        raise SystemExit(f"--out {args.out}: already holds a checkpoint: pass --resume to continue "
                         "it, or choose another --out")
