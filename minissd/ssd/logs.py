"""Training logs: read a run's log.jsonl, draw its curves, optionally export to TensorBoard.

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


def read_log(path: str) -> list[dict]:
    """Rows of a log.jsonl (NaN/null kept as they are); a broken line is an error naming it."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
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
