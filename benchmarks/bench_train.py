"""Seconds per outer iteration of single-stage training, split into its parts, under each
mixed-precision mode and thread setting, idle and beside a CPU-bound competitor.

    python benchmarks/bench_train.py --preset laptop --iters 5 --k-in 2 --amp off bf16
    python benchmarks/bench_train.py --preset laptop --iters 5 --k-in 2 --contended \\
        --threads 2 1 auto --wait-policy ACTIVE PASSIVE
    python benchmarks/bench_train.py --preset laptop --iters 8 --k-in 2 --amp off --late \\
        --threads auto 2

Each setting runs in a fresh child process (OMP_WAIT_POLICY is read when torch loads):
`warmup` outer iterations of Algorithm 1 on the built-in procedural cars, then `iters`
timed ones, printing the mean seconds of the whole iteration and of its parts: the
diffusion step (lines 4-5 plus the cfg.diff_steps - 1 extra denoiser updates), the
occupancy refresh, the K_in rendering inner steps (lines 6-13) and, inside those, the
decoder MLP's forward passes; `cpu` is the process's CPU seconds per iteration (threads
spinning at OpenMP barriers show up there). --contended also runs every setting beside a busy-looping
process that this script starts and stops (it also stops itself after --competitor-s
seconds), and prints idle / contended and their ratio. --late starts the competitor only
after the child has imported minissd and run its warm-up iterations (what the thread count
decided at import cannot see) and prints the threads and seconds of every timed iteration:
under MINISSD_THREADS=auto, runtime.tick() (called once per iteration, as the training loop
does) should drop to the free cores within a few iterations. Report the machine's load
(`uptime`) with the numbers: on a shared machine they are not idle timings.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from minissd.config import get_preset, pick_device
from minissd.data.procedural import ensure_dataset
from minissd.ssd.model import load_training_data
from minissd.runtime import tick
from minissd.ssd.train import Trainer

PARTS = ("total", "t_diff", "t_occ", "t_rend", "t_decoder", "cpu")


def time_decoder(decoder) -> dict:
    """Accumulate the wall time of the decoder's forward passes in acc["s"] (hooks)."""
    acc = {"s": 0.0, "t0": 0.0}
    decoder.register_forward_pre_hook(lambda *_: acc.__setitem__("t0", time.perf_counter()))
    decoder.register_forward_hook(
        lambda *_: acc.__setitem__("s", acc["s"] + time.perf_counter() - acc["t0"]))
    return acc


def start_rival(seconds: float) -> subprocess.Popen:
    """A CPU-bound competitor (one busy-looping process) that stops itself after `seconds`."""
    return subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + "
                             f"{seconds}\nwhile time.time() < end: pass"])


def measure(preset: str, k_in: int, amp: str, iters: int, warmup: int, device: str | None,
            rival_s: float = 0.0) -> dict:
    """Mean seconds per outer iteration and per part (one child process's work); with
    `rival_s`, a competitor starts after the warm-up (and is stopped at the end)."""
    dev = pick_device(device)
    cfg = get_preset(preset, k_in_schedule=((0, k_in),), occ_warmup=0, amp=amp)
    data_dir = ensure_dataset("cars", "train", cfg.data_scenes, cfg.data_views, cfg.image_res,
                              progress=False)
    tr = Trainer(cfg, load_training_data(data_dir, cfg, dev), device=dev)
    for _ in range(warmup):
        tr.outer_step()
        tick()
    acc = time_decoder(tr.decoder)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    rival = start_rival(rival_s) if rival_s else None
    t0, c0 = time.perf_counter(), time.process_time()
    rows, trace = [], []
    try:
        for _ in range(iters):                 # as ResumableLoop.train: a step, then tick()
            t = time.perf_counter()
            rows.append(tr.outer_step())
            sync()
            trace.append((torch.get_num_threads(), round(time.perf_counter() - t, 3)))
            tick()
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    out = {"total": (time.perf_counter() - t0) / iters, "t_decoder": acc["s"] / iters,
           "cpu": (time.process_time() - c0) / iters, "trace": trace,
           "threads": torch.get_num_threads(), "device": str(dev),
           "loss_rend": rows[-1]["loss_rend"]}
    for k in ("t_diff", "t_occ", "t_rend"):
        out[k] = sum(r[k] for r in rows) / len(rows)
    return out


def run_child(args, amp: str, threads: str, policy: str, where: str) -> dict:
    """One setting in a fresh process: `where` "idle", "busy" (a competitor from the
    start) or "late" (a competitor from the first timed iteration)."""
    env = dict(os.environ, MINISSD_THREADS=threads)
    env.pop("OMP_NUM_THREADS", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--k-in", str(args.k_in[0]), "--amp", amp]
    if args.device:
        cmd += ["--device", args.device]
    if where == "late":
        cmd += ["--rival-s", str(args.competitor_s)]
    rival = None
    if where == "busy":  # a CPU-bound competitor that stops itself after competitor_s seconds
        rival = start_rival(args.competitor_s)
        time.sleep(0.5)
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="laptop")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--k-in", type=int, nargs="+", default=[2])
    p.add_argument("--amp", nargs="+", default=["off", "bf16"])
    p.add_argument("--threads", nargs="+", default=["torch"],
                   help="MINISSD_THREADS per setting: 'torch' (PyTorch's default), 'auto', N")
    p.add_argument("--wait-policy", nargs="+", default=[""],
                   help="OMP_WAIT_POLICY per setting (ACTIVE, PASSIVE; '' = as in this "
                   "environment, else minissd's GOMP_SPINCOUNT=300000); GOMP_SPINCOUNT passes through")
    p.add_argument("--contended", action="store_true", help="also beside a busy process")
    p.add_argument("--late", action="store_true",
                   help="also with a competitor that starts after import and warm-up")
    p.add_argument("--competitor-s", type=float, default=600.0)
    p.add_argument("--device")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rival-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.preset, args.k_in[0], args.amp[0], args.iters, args.warmup,
                                 args.device, args.rival_s)))
        return
    print(f"preset {args.preset}, K_in {args.k_in}, {args.iters} timed iterations after "
          f"{args.warmup}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'amp':5s} {'threads':>7s} {'wait':>7s} {'beside':>6s} " +
          " ".join(f"{k:>9s}" for k in PARTS) + "  (seconds per outer iteration)")
    for k in args.k_in:
        args.k_in = [k]
        for amp in args.amp:
            for threads in args.threads:
                for policy in args.wait_policy:
                    wheres = ["idle"] + ["busy"] * args.contended + ["late"] * args.late
                    rows = {}
                    for where in wheres:
                        r = rows[where] = run_child(args, amp, threads, policy, where)
                        print(f"{amp:5s} {threads:>7s} {policy or '-':>7s} {where:>6s} " +
                              " ".join(f"{r[x]:9.3f}" for x in PARTS), flush=True)
                        print("      threads, seconds per timed iteration: " +
                              " ".join(f"{n}:{t:.2f}" for n, t in r["trace"]), flush=True)
                    for where in wheres[1:]:
                        print(f"      {where} / idle = {rows[where]['total'] / rows['idle']['total']:.2f}",
                              flush=True)


if __name__ == "__main__":
    main()
