"""Training logs: write and read a run's log.jsonl, export it to TensorBoard.

    python -m minissd plot RUN_DIR                  # -> RUN_DIR/curves.png
    python -m minissd plot RUN_DIR --tensorboard    # also RUN_DIR/tensorboard/ (if installed)

A run folder (`python -m minissd train --out RUN_DIR`, the quick start's run/, or
~/.cache/minissd/runs/KEY) holds log.jsonl: one JSON object per outer iteration,
{"iter", "phase", "k_in", "loss_rend", "loss_diff", "loss_diff_extra", "lambda_diff", ...}.
A value that does not exist at that iteration (the rendering loss in stage 2 of the
two-stage baseline, say) is null or NaN; both are skipped when plotting. The figure is
`viz.plot_training_curves`, the same one the quick start draws.
"""
from __future__ import annotations

import json
import math
import os

from minissd.utils import write_atomic


def json_row(r: dict) -> str:
    """One log row as JSON, NaN and infinities as null (bare NaN is not JSON)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def write_log(path: str, rows: list[dict]) -> None:
    """The training log as JSON lines (one dict per outer iteration), written atomically;
    missing values (NaN) are written as null."""
    write_atomic(path, lambda f: f.writelines(json_row(r) for r in rows), binary=False)


def append_log(path: str, rows: list[dict]) -> None:
    """Append rows to a JSON-lines log (a kill mid-write leaves at most one partial last
    line, which read_log skips and the next checkpoint rewrites)."""
    with open(path, "a") as f:
        f.writelines(json_row(r) for r in rows)
        f.flush()


def read_log(path: str) -> list[dict]:
    """The rows of a log.jsonl, null values read back as NaN. A partial LAST line (a run
    killed mid-write, or still writing) is skipped; any other broken line is an error
    naming path:line."""
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append({k: float("nan") if v is None else v for k, v in row.items()})
    return rows


def log_path(run_dir: str) -> str:
    """RUN_DIR/log.jsonl (RUN_DIR may also be the log file itself)."""
    return run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, "log.jsonl")


def write_tensorboard(log: list[dict], out_dir: str) -> str:
    """Every numeric column as a TensorBoard scalar 'train/<name>' (needs `tensorboard`)."""
    from torch.utils.tensorboard import SummaryWriter  # ImportError without tensorboard
    writer = SummaryWriter(out_dir)
    try:
        for i, row in enumerate(log):
            step = int(row.get("iter", i + 1))
            for k, v in row.items():
                if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                        and math.isfinite(v):
                    writer.add_scalar(f"train/{k}", v, step)
    finally:
        writer.close()
    return out_dir
