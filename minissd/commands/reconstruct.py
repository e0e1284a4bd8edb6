"""`python -m minissd reconstruct`: reconstruct test scenes from posed input views.

The command-line layer only: parse flags, check paths, call `minissd.testtime.reconstruct`."""
from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from minissd.cli import SEED_MAX, distinct_views, non_negative, not_an_input, positive
from minissd.cli import require_positive, test_settings, writable_dir
from minissd.commands.export_mesh import add_mesh_flags, write_meshes
from minissd.config import pick_device
from minissd.data.cameras import eval_view_ids
from minissd.data.srn import SRNDataset
from minissd.eval.evaluate import write_json
from minissd.ssd.model import Model
from minissd.testtime.reconstruct import reconstruct_scene, save_figure


def add_arguments(p):
    p.add_argument("--ckpt", required=True, help="model file written by `python -m minissd train`")
    p.add_argument("--data", required=True, help="SRN-format folder of test scenes")
    p.add_argument("--input-views", type=non_negative(), nargs="+", default=[64],
                   help="input view ids (SRN: 64 for 1 view, 64 104 for 2)")
    p.add_argument("--finetune", default="rend+diff", choices=["rend+diff", "rend", "none"],
                   help="test-time finetuning after guided sampling (eq. 7)")
    p.add_argument("--out", required=True, help="output folder (figures, metrics.json)")
    p.add_argument("--scenes", type=positive(), help="reconstruct only the first N scenes (default: all)")
    p.add_argument("--lambda-gd", type=float,
                   help="guidance scale (default: the model's test-time config, lambda_gd)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the test-time recon_steps, "
                   "0 = 1.5 x cfg.ddim_steps)")
    p.add_argument("--test-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a test-time setting of config.TestConfig, e.g. ft_c_diff=4")
    p.add_argument("--max-eval", type=positive(), help="evaluate on at most N held-out views per scene")
    p.add_argument("--seed", type=non_negative(SEED_MAX), default=0, help="sampling seed (scene i: seed + i)")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--mesh", action="store_true",
                   help="also write a coloured mesh of every reconstruction (<scene>.ply; export-mesh)")
    add_mesh_flags(p, default_resolution=128)
    p.add_argument("--unposed", action="store_true",
                   help="ONE input view whose camera is not given: estimate it (grid search + "
                        "SO(3) optimisation, minissd/related/pose.py); works with a CodeNeRF "
                        "or an SSDNeRF model file; writes the panels and pose errors")


def run_unposed(args):
    """--unposed: pose_eval.evaluate_pose_scene on each scene, one figure per scene."""
    from minissd.related.codenerf import load_any
    from minissd.related.pose import PoseConfig
    from minissd.related.pose_eval import evaluate_pose_scene, summarise
    if len(args.input_views) != 1:
        raise SystemExit(f"--input-views {args.input_views}: --unposed takes one view")
    model = load_any(args.ckpt, device=pick_device(args.device))
    ds = SRNDataset(args.data, resolution=model.cfg.image_res)
    rows = []
    for i in tqdm(range(min(len(ds), args.scenes or len(ds))), desc="reconstruct (unposed)"):
        scene = ds[i]
        V, v = scene["images"].shape[0], args.input_views[0]
        if not 0 <= v < V:
            raise SystemExit(f"{args.data}/{scene['name']}: has {V} views, no view {v}")
        ev_ids = eval_view_ids(V, [v], at_most=args.max_eval)
        rows.append(evaluate_pose_scene(model, scene, v, ev_ids, PoseConfig(), args.seed + i,
                                        true_pose=False,
                                        figure=os.path.join(args.out, f"{scene['name']}_unposed.png")))
        tqdm.write(f"{scene['name']}: rotation error {rows[-1]['rot_err_deg']:.1f} deg, "
                   f"PSNR {rows[-1]['PSNR']:.2f} dB")
    write_json({"ckpt": args.ckpt, "data": args.data, **summarise(rows), "scenes": rows},
               os.path.join(args.out, "metrics.json"))
    print(f"-> {os.path.join(args.out, 'metrics.json')}")
    return 0


def run(args):
    if args.unposed:
        for flag, path, ok in (("--ckpt", args.ckpt, os.path.isfile), ("--data", args.data, os.path.isdir)):
            if not ok(path):
                raise SystemExit(f"{flag} {path}: not found")
        writable_dir(args.out, "--out")
        return run_unposed(args)
    require_positive(args, "steps")
    for flag, path, ok in (("--ckpt", args.ckpt, os.path.isfile), ("--data", args.data, os.path.isdir)):
        if not ok(path):
            raise SystemExit(f"{flag} {path}: not found")
    distinct_views(args.input_views)
    metrics_json = os.path.join(args.out, "metrics.json")
    not_an_input({"--out": args.out}, {"--data": args.data})
    not_an_input({"--out ... metrics.json": metrics_json}, {"--ckpt": args.ckpt})
    model = Model.load(args.ckpt, device=pick_device(args.device))
    model.test = test_settings(model, args)            # what runs is what metrics.json records
    writable_dir(args.out, "--out")
    ds = SRNDataset(args.data, resolution=model.cfg.image_res)
    n = min(len(ds), args.scenes or len(ds))
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc="reconstruct"):
        scene = ds[i]
        V = scene["images"].shape[0]
        bad = [v for v in args.input_views if not 0 <= v < V]
        if bad:
            raise SystemExit(f"{args.data}/{scene['name']}: has {V} views, no view {bad}")
        gen = torch.Generator(model.codes.device).manual_seed(args.seed + i)
        r = reconstruct_scene(model, scene, args.input_views, max_eval=args.max_eval,
                              finetune=args.finetune, generator=gen)
        rows.append({"scene": scene["name"], "psnr": float(r["psnr"].mean()),
                     "ssim": float(r["ssim"].mean()), "n_eval": len(r["eval_ids"])})
        save_figure(r, os.path.join(args.out, f"{scene['name']}.png"),
                    title=f"{scene['name']}: {rows[-1]['psnr']:.2f} dB ({args.finetune})")
        if args.mesh:
            write_meshes(model, r["code"][None], args.out, [scene["name"]], args.resolution,
                         args.threshold, args.format, quiet=True)
        tqdm.write(f"{scene['name']}: PSNR {rows[-1]['psnr']:.2f} dB  SSIM {rows[-1]['ssim']:.3f}")
    summary = {"ckpt": args.ckpt, "data": args.data, "input_views": args.input_views,
               "finetune": args.finetune, "test_config": model.test.to_dict(),
               "lambda_gd": model.test.lambda_gd,
               "psnr": sum(r["psnr"] for r in rows) / len(rows),
               "ssim": sum(r["ssim"] for r in rows) / len(rows), "scenes": rows}
    write_json(summary, metrics_json)      # NaN -> null
    print(f"{n} scenes: PSNR {summary['psnr']:.2f} dB  SSIM {summary['ssim']:.3f} -> {metrics_json}")
    return 0
