"""`python -m minissd plot RUN_DIR`: curves from log.jsonl, whose values may be null or NaN."""
import json
import math

import numpy as np
import pytest

from minissd import viz
from minissd.cli import main
from minissd.ssd import logs


def _two_stage_log(n=30):
    """Stage 1 logs no diffusion loss (NaN here), stage 2 no rendering loss (null here)."""
    rows = []
    for i in range(1, n + 1):
        s1 = i <= n // 2
        rows.append({"iter": i, "phase": "stage1" if s1 else "stage2", "k_in": 2 if s1 else 0,
                     "loss_rend": 1.0 / i if s1 else None,
                     "loss_diff": float("nan") if s1 else 0.1 + 1.0 / i,
                     "loss_diff_extra": float("nan"), "lambda_diff": 4.0})
    return rows


def _write(tmp_path, rows):
    with open(tmp_path / "log.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")            # NaN -> NaN, None -> null
    return tmp_path


def test_series_skips_null_and_nan():
    rows = _two_stage_log()
    it, val = viz.log_series(rows, "loss_rend")
    assert list(it) == list(range(1, 16)) and np.isfinite(val).all()
    it, val = viz.log_series(rows, "loss_diff")
    assert list(it) == list(range(16, 31))
    assert viz.log_series(rows, "missing")[0].size == 0


def test_figure_plots_only_finite_values_and_marks_the_stage_change():
    fig = viz.plot_training_curves(_two_stage_log())
    rend, diff = fig.axes
    raw = rend.lines[0]
    assert list(raw.get_xdata()) == list(range(1, 16))
    assert np.allclose(raw.get_ydata(), [1.0 / i for i in range(1, 16)])
    assert np.isfinite(diff.lines[0].get_ydata()).all()
    assert any(list(l.get_xdata()) == [16, 16] for l in rend.lines)   # stage1 -> stage2 line


def test_plot_command_writes_curves_png(tmp_path, capsys):
    run = _write(tmp_path, _two_stage_log())
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == str(run / "curves.png")
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = logs.read_log(str(run / "log.jsonl"))
    assert math.isnan(rows[-1]["loss_rend"]) and math.isnan(rows[0]["loss_diff"])   # null, NaN


def test_plot_command_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no log.jsonl"):
        main(["plot", str(tmp_path)])
    (tmp_path / "log.jsonl").write_text('{"iter": 1, "loss_rend": 0.5}\n{"iter": 2, "loss_re\n'
                                        '{"iter": 3, "loss_rend": 0.4}\n')
    with pytest.raises(SystemExit, match="log.jsonl:2"):                 # a broken middle line
        main(["plot", str(tmp_path)])


def test_plot_skips_the_partial_last_line_of_a_live_run(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"iter": 1, "loss_rend": 0.5}\n{"iter": 2, "loss_rend": 0.4}\n'
                                        '{"iter": 3, "loss_re')          # still being written
    assert [r["iter"] for r in logs.read_log(str(tmp_path / "log.jsonl"))] == [1, 2]
    assert main(["plot", str(tmp_path)]) == 0


def test_tensorboard_export_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    run = _write(tmp_path, _two_stage_log())
    assert main(["plot", str(run), "--tensorboard"]) == 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
