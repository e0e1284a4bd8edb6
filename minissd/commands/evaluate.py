"""`python -m minissd evaluate`: the paper's reconstruction and generation tables.

The command-line layer only: parse flags, check paths, call `minissd.eval.evaluate`."""
from __future__ import annotations

import math
import os

from minissd.cli import (
    SEED_MAX,
    check_steps,
    distinct_views,
    non_negative,
    not_an_input,
    positive,
    require_positive,
    test_settings,
    writable_file,
)
from minissd.config import pick_device
from minissd.data.cameras import PAPER_N_VIEWS
from minissd.data.srn import SRNDataset
from minissd.errors import UserError
from minissd.eval import fid
from minissd.eval.evaluate import (
    GEN_COLUMNS,
    PAPER_ABLATION,
    PAPER_GENERATION,
    PAPER_RECON,
    RECON_COLUMNS,
    calibrate_threshold,
    evaluate_ablations,
    evaluate_generation,
    evaluate_reconstruction,
    markdown_table,
    side_by_side,
    write_json,
)
from minissd.ssd.model import Model
from minissd.testtime.reconstruct import ABLATIONS


def add_arguments(p):
    p.add_argument("--ckpt", required=True, help="model file (single-stage, or the one to evaluate)")
    p.add_argument("--ckpt2", help="two-stage model file (needed by ablation A1)")
    p.add_argument("--data", required=True, help="SRN-format folder of test scenes")
    p.add_argument("--task", default="recon", choices=["recon", "generation", "pose"],
                   help="reconstruction (PSNR/SSIM/LPIPS/FID), generation (FID/KID/COV/MMD), or "
                        "pose: 1 UNPOSED view, pose errors + PSNR/SSIM (CodeNeRF or SSDNeRF file)")
    p.add_argument("--ablation", nargs="+", choices=list(ABLATIONS), help="run these rows of Table 3")
    p.add_argument("--input-views", type=non_negative(), nargs="+", default=[64],
                   help="paper view ids of 251 (64; 64 104), scaled on shorter spirals")
    p.add_argument("--finetune", default="rend+diff", choices=["rend+diff", "rend", "none"],
                   help="test-time finetuning (without --ablation)")
    p.add_argument("--scenes", type=positive(), help="only the first N test scenes (default: all)")
    p.add_argument("--eval-every", type=positive(), default=1, help="score every k-th non-input view")
    p.add_argument("--lambda-gd", type=float,
                   help="guidance scale (default: the model's test-time config, lambda_gd)")
    p.add_argument("--test-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a test-time setting of config.TestConfig, e.g. ft_c_diff=4")
    p.add_argument("--steps", type=int, help="DDIM steps (generation: default cfg.ddim_steps; "
                   "reconstruction: the test-time recon_steps)")
    p.add_argument("--samples", type=positive(10_000), default=16, help="generation: number of samples")
    p.add_argument("--threshold", type=float, help="generation: density threshold (skips calibration)")
    p.add_argument("--train-data", help="generation: the model's training folder, to calibrate the threshold")
    p.add_argument("--grid-res", type=positive(512), default=48, help="generation: density grid resolution")
    p.add_argument("--no-true-pose", action="store_true",
                   help="pose: skip the fits with the TRUE camera (their columns are n/a); the "
                        "estimated-pose side alone")
    p.add_argument("--probe", choices=["camera", "joint"],
                   help="pose: how the start cameras are probed (default: the model kind's, "
                        "related/pose.py DEFAULT_PROBE)")
    p.add_argument("--json", required=True, help="output JSON file")
    p.add_argument("--seed", type=non_negative(SEED_MAX), default=0, help="sampling seed (scene i: seed + i)")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")


def check_input_views(ids, data: str) -> None:
    """--input-views are paper ids of 251 views (or ids of a test set with more views);
    out-of-range ids are refused instead of wrapped round."""
    n = max([PAPER_N_VIEWS] + SRNDataset(data).view_counts())
    bad = [v for v in ids if not 0 <= v < n]
    if bad:
        raise UserError(f"--input-views {bad}: view ids must lie in 0..{n - 1}")


def check_pair(model, model2, ckpt: str, ckpt2: str) -> None:
    """--ckpt2 must be a two-stage model of the same preset and sizes as --ckpt."""
    if model2.mode != "two-stage":
        raise UserError(f"--ckpt2 {ckpt2}: a {model2.mode} model, expected the two-stage one")
    keys = ("name", "image_res", "code_ch", "code_res", "views_per_scene")
    diff = [f"{k} {getattr(model.cfg, k)!r} vs {getattr(model2.cfg, k)!r}" for k in keys
            if getattr(model.cfg, k) != getattr(model2.cfg, k)]
    if diff:
        raise UserError(f"--ckpt {ckpt} and --ckpt2 {ckpt2} were trained with different "
                        f"configs ({'; '.join(diff)}): the ablation would not compare like "
                        "with like")


def run_pose(args):
    """--task pose: minissd/related/pose_eval.py on either kind of model file."""
    from minissd.related.codenerf import load_any
    from minissd.related.pose import PoseConfig
    from minissd.related.pose_eval import evaluate_pose, pose_table
    if len(args.input_views) != 1:
        raise UserError(f"--input-views {args.input_views}: --task pose takes one unposed view")
    check_input_views(args.input_views, args.data)
    try:
        model = load_any(args.ckpt, device=pick_device(args.device))
    except ValueError as e:
        raise UserError(f"--ckpt {args.ckpt}: not a CodeNeRF or SSDNeRF model file "
                        f"({str(e).splitlines()[0][:200]})") from None
    if len(SRNDataset(args.data)) == 0:
        raise UserError(f"--data {args.data}: no scenes")
    res = evaluate_pose(model, args.data, n_scenes=args.scenes, input_view=args.input_views[0],
                        eval_every=args.eval_every, pcfg=PoseConfig(probe=args.probe),
                        seed=args.seed, true_pose=not args.no_true_pose,
                        on_row=lambda r: write_json({"args": vars(args), "results": r,
                                                     "partial": True}, args.json))
    table = pose_table({f"{res['model']} ({os.path.basename(args.ckpt)})": res})
    print(table)
    write_json({"args": vars(args), "results": res, "table": table}, args.json)
    print(f"-> {args.json}")
    return 0


def run(args):
    if args.task == "pose":
        for flag, path in (("--ckpt", args.ckpt), ("--data", args.data)):
            if not os.path.exists(path):
                raise SystemExit(f"{flag} {path}: no such {'file' if flag == '--ckpt' else 'folder'}")
        writable_file(args.json, "--json")
        return run_pose(args)
    for flag, path in (("--ckpt", args.ckpt), ("--ckpt2", args.ckpt2)):
        if path and not os.path.isfile(path):
            raise SystemExit(f"{flag} {path}: no such file")
    if not os.path.isdir(args.data):
        raise SystemExit(f"--data {args.data}: no such folder")
    require_positive(args, "steps")
    not_an_input({"--json": args.json}, {"--ckpt": args.ckpt, "--ckpt2": args.ckpt2,
                                         "--train-data": args.train_data})
    writable_file(args.json, "--json")
    if args.threshold is not None and not (math.isfinite(args.threshold) and args.threshold > 0):
        raise UserError(f"--threshold {args.threshold}: a density threshold must be a positive "
                        "finite number")
    if args.task == "recon":
        check_input_views(distinct_views(args.input_views), args.data)
    dev = pick_device(args.device)
    model = Model.load(args.ckpt, device=dev)
    common = dict(n_scenes=args.scenes, seed=args.seed)
    if args.task == "generation":
        cal = None
        if args.threshold is None and args.train_data:
            cal = calibrate_threshold(model, args.train_data, res=args.grid_res)
        given = args.threshold is not None
        thr = args.threshold if given else (cal["threshold"] if cal else 10.0)
        print(f"density threshold {thr:.3g} ({'given' if given else 'calibrated' if cal else 'default'})")
        check_steps(args.steps, model.cfg)
        res = evaluate_generation(model, args.data, args.samples, thr, res=args.grid_res,
                                  steps=args.steps, **common)
        res["calibration"] = cal
        table = markdown_table({res["label"]: res, **PAPER_GENERATION}, GEN_COLUMNS)
    else:
        kw = dict(input_views=args.input_views, eval_every=args.eval_every, **common)
        models = {model.mode: model}
        if args.ckpt2 and model.mode != "single-stage":
            raise UserError(f"--ckpt {args.ckpt}: a {model.mode} model; with --ckpt2 the "
                            "single-stage model goes in --ckpt")
        if args.ckpt2:
            models["two-stage"] = Model.load(args.ckpt2, device=dev)
            check_pair(model, models["two-stage"], args.ckpt, args.ckpt2)
        for m in models.values():
            m.test = test_settings(m, args)         # what runs is what the JSON records
        if args.ablation:
            if "A1" in args.ablation and "two-stage" not in models:
                raise SystemExit("--ablation A1 needs the two-stage model: pass --ckpt2 TWO_STAGE.pt")
            res = evaluate_ablations(models, args.data, args.ablation, **kw)
            rows = side_by_side(res, PAPER_ABLATION)
        else:
            res = evaluate_reconstruction(model, args.data, finetune=args.finetune, **kw)
            rows = {res["label"]: res, **PAPER_RECON}
        table = markdown_table(rows, RECON_COLUMNS)
    fid_net = fid.fid_network()
    table += "\n\n" + fid.fid_network_note(fid_net)
    print(table)
    used = {k: m.test.to_dict() for k, m in models.items()} if args.task == "recon" else None
    write_json({"args": vars(args), "results": res, "table": table, "fid_network": fid_net,
                "test_config": used}, args.json)
    print(f"-> {args.json}")
    return 0
