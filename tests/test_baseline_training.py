"""The baselines' training (related/codenerf_fit.py, related/diffrf_train.py) runs in
resume.ResumableLoop, SSDNeRF's loop: a NaN parameter stops the run with one line and
keeps the last good checkpoint, Ctrl-C prints the line that resumes it, and a resumed
run ends with exactly the weights of an uninterrupted one."""
import os
import sys

import pytest
import torch

from minissd.cli import main
from minissd.related.codenerf_fit import CodeNeRFTrainer
from minissd.related.diffrf_train import DiffRFTrainer
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.train import Trainer

# tiny runs of 6 iterations, a checkpoint every 2 (DiffRF: 3 fitting steps, 3 denoiser steps)
SETS = {"codenerf": ["latent=8", "hidden=16", "rays_per_scene=32", "scenes_per_batch=2",
                     "n_samples=8", "image_res=16", "ckpt_every=2", "warmup=2"],
        "diffrf": ["grid_res=8", "unet_base=8", "unet_mults=[1,2]", "unet_groups=4", "image_res=16",
                   "n_samples=8", "fit_iters=3", "fit_batch=2", "fit_rays=32", "batch=2",
                   "rgb_rays=16", "ddim_steps=3", "T=50", "ckpt_every=2"]}
TRAINERS = {"codenerf": CodeNeRFTrainer, "diffrf": DiffRFTrainer}


def argv(model, made, out, iters=6):
    sets = [a for s in SETS[model] for a in ("--set", s)]
    return ["train", "--model", model, "--preset", "smoke", "--data", made, "--out", out,
            "--iters", str(iters - 3 if model == "diffrf" else iters), *sets]


def cli(args, capsys):
    """(exit status, stderr's lines without progress bars) of `python -m minissd ARGS`."""
    try:
        rc = main(args)
    except SystemExit as e:
        rc, _ = e.code, print(e.code, file=sys.stderr)
    err = capsys.readouterr().err.replace("\r", "\n")
    return rc, [line for line in err.splitlines() if line.strip() and "it/s" not in line
                and "?it" not in line and "%|" not in line]


def saved(run):
    return ckpt.load(os.path.join(run, "checkpoint.pt"))


def iteration(sd):
    return sd.get("iter", sd.get("it"))


def tensors_equal(a, b, where=""):
    """Every tensor of two nested checkpoints bit for bit equal (the log's timings aside)."""
    if torch.is_tensor(a):
        return torch.equal(a, b) or pytest.fail(f"{where} differs")
    if isinstance(a, dict):
        assert set(a) == set(b), where
        return all(tensors_equal(a[k], b[k], f"{where}.{k}") for k in a if k != "log")
    return True


def patch_step(monkeypatch, model, at, action):
    """The trainer's outer_step, with action(trainer) run on its `at`-th call of the test
    (after the step: a parameter turned NaN; before it: Ctrl-C)."""
    cls, calls = TRAINERS[model], []
    step = cls.outer_step

    def wrapped(self):
        calls.append(1)
        if len(calls) == at:
            return action(self, lambda: step(self))
        return step(self)
    monkeypatch.setattr(cls, "outer_step", wrapped)


def poison(self, step):
    """After the step, a NaN where no loss sees it yet: a CodeNeRF weight, a DiffRF EMA weight."""
    row = step()
    part = self.net if isinstance(self, CodeNeRFTrainer) else self.ema
    with torch.no_grad():
        next(part.parameters()).view(-1)[0] = float("nan")
    return row


def ctrl_c(self, step):
    raise KeyboardInterrupt


@pytest.mark.parametrize("model", ["codenerf", "diffrf"])
def test_nan_parameter_stops_with_one_line_and_keeps_the_checkpoint(model, made, tmp_path, capsys,
                                                                    monkeypatch):
    out, at = str(tmp_path / "run"), {"codenerf": 3, "diffrf": 5}[model]     # no save there
    patch_step(monkeypatch, model, at, poison)
    rc, err = cli(argv(model, made, out), capsys)
    assert rc == 1 and len(err) == 1, err
    assert f"training diverged at iteration {at}" in err[0], err
    assert "non-finite parameters" in err[0] and "checkpoint.pt is untouched" in err[0], err
    sd = saved(out)
    assert iteration(sd) == at - 1 and not ckpt.nonfinite(sd)            # the last good one
    ckpt.RunLock(out).acquire().release()                                 # lock released


@pytest.mark.parametrize("model", ["codenerf", "diffrf"])
def test_ctrl_c_says_how_to_resume_and_resuming_equals_one_run(model, made, tmp_path, capsys,
                                                              monkeypatch):
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    assert cli(argv(model, made, whole), capsys)[0] in (0, None)
    with monkeypatch.context() as m:
        patch_step(m, model, 3, ctrl_c)                  # Ctrl-C in iteration 3
        rc, err = cli(argv(model, made, cut), capsys)
    assert rc == 130 and len(err) == 1, err
    assert err[0].startswith("interrupted:") and "(iteration 2) is kept" in err[0], err
    assert err[0].endswith(" --resume"), err
    ckpt.RunLock(cut).acquire().release()                                 # lock released
    rc, err = cli(argv(model, made, cut) + ["--resume"], capsys)
    assert rc in (0, None), err
    a, b = saved(whole), saved(cut)
    assert iteration(a) == iteration(b) == 6 and tensors_equal(a, b)
    assert len(a["log"]) == len(b["log"]) == 6


def test_a_checkpoint_of_the_other_baseline_is_refused(made, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli(argv("diffrf", made, out, iters=4), capsys)[0] in (0, None)
    rc, err = cli(argv("codenerf", made, out) + ["--resume"], capsys)
    assert rc == 1 and len(err) == 1 and "checkpoint.pt: format" in err[0], err


NAN = float("nan")


@pytest.mark.parametrize("cls, row, shown", [
    (Trainer, {"phase": "single-stage", "loss_rend": 0.0123456, "loss_diff": 0.5,
               "loss_diff_extra": 0.25, "k_in": 2}, {"loss_rend": "0.01235", "loss_diff": "0.5"}),
    (Trainer, {"phase": "stage1", "loss_rend": 1e-5, "loss_diff": NAN, "loss_diff_extra": NAN},
     {"loss_rend": "1e-05"}),
    (Trainer, {"phase": "stage2", "loss_rend": NAN, "loss_diff": 0.75, "loss_diff_extra": 0.5},
     {"loss_diff": "0.75"}),
    (CodeNeRFTrainer, {"loss": 0.02, "mse": 0.01, "psnr": 20.0, "time": 1.5}, {"psnr": "20.00"}),
    (DiffRFTrainer, {"phase": "fit", "fit_psnr": 18.123456}, {"fit_psnr": "18.12"}),
    (DiffRFTrainer, {"phase": "diffusion", "loss_rf": 0.5, "loss_rgb": 0.0312345},
     {"loss_rf": "0.5", "loss_rgb": "0.03123"}),
])
def test_the_progress_bar_shows_the_keys_each_trainer_declares(cls, row, shown):
    """One postfix (resume.ResumableLoop.postfix over the trainer's SHOWN keys): the
    logged values each trainer's bar shows, formatted, NaN (not computed) left out."""
    assert cls.postfix(cls.__new__(cls), dict(row, iter=3)) == shown
