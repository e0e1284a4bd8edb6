"""The run folder of every trainer: the outer loop, its checkpoints, resumption and
divergence stops.

`ResumableLoop` is everything around one outer iteration that makes a long run safe to
interrupt, shared by SSDNeRF's `train.Trainer` (Algorithm 1 and the two-stage baseline,
through the `Resumable` mixin below) and the baselines' trainers (related/codenerf_fit.py
`CodeNeRFTrainer`, related/diffrf_train.py `DiffRFTrainer`); checkpoint.py holds the
file-level parts (atomic writes, safe loads, the run lock):

  * `train()` runs outer iterations until the end of the schedule, checkpointing every
    cfg.ckpt_every iterations and appending the log every few; the run folder is locked.
  * Every iteration checks the losses AND, cheaply (one sum per tensor), every parameter,
    code and EMA copy (`watched`): a NaN the losses cannot see yet (an EMA weight, the
    denoiser in stage 1) stops training at once with errors.TrainingDiverged, and the
    last good checkpoint is kept.
  * `save()` refuses a state holding any NaN/inf tensor (Adam moments and EMAs included);
    `resume()` checks every tensor, the structure and the config of a checkpoint before
    touching the trainer, and refuses a run asked to end before the iteration it reached.
  * Data is identified by its content's fingerprint, not its folder's name, so a run
    resumes from a byte-identical copy of its data elsewhere.
  * Ctrl-C leaves the last checkpoint; `python -m minissd train` then prints one line
    naming it and the command that resumes it (commands/train.py `interrupted`).

A trainer provides cfg (with ckpt_every), out_dir, data_id, it, log, total_iters, mode
(the progress bar's label), `outer_step()` (one iteration: appends and returns its log
row), `loss_keys(row)`, SHOWN (the logged keys its progress bar shows), `watched()`,
`state_dict()` and `load_state_dict(sd, path)` (check_checkpoint, then load_parts).
`train()`'s `while` loop is the one place that runs once per iteration, for every trainer.
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn
from tqdm.auto import tqdm

from minissd.errors import TrainingDiverged
from minissd.nerf.occupancy import OccupancyGrid
from minissd.runtime import tick
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.logs import append_log, write_log

FORMAT = "minissd-train-v2"      # v2: mean_code (stage-1 init), EMA ramp-up
MODULES = ("decoder", "prior", "ema_decoder", "ema_prior")
STATE_KEYS = ("format", "config", "mode", "data_id", "iter", "bank", "occupancy", "decoder", "prior",
              "opt_dec", "opt_prior", "ema_decoder", "ema_prior", "mean_code", "rng", "torch_rng",
              "log")


class ResumableLoop:
    """The train loop, save and resume of every trainer (see the module docstring)."""
    FORMAT = ""                  # the checkpoint's "format" entry
    STATE_KEYS: tuple = ()       # the entries a whole checkpoint holds
    ITER_KEY = "iter"            # the entry holding the iteration count
    SAME_AS_RUN = ("data_id",)   # entries that must equal this trainer's attributes
    LR_EXAMPLE = "lr_code"       # a learning rate to name when training diverges
    SHOWN: dict = {}             # the progress bar's logged keys -> their format, e.g. {"psnr": ".2f"}

    def train(self, iters: int | None = None, progress: bool = True, stop_after: int | None = None,
              log_every: int = 10):
        """Run until `total_iters` (or `stop_after` more iterations), checkpointing
        atomically every cfg.ckpt_every iterations and at the end, and appending the new
        rows to out_dir/log.jsonl every `log_every` iterations.

        The run folder is locked for the whole call (errors.RunLocked if another trainer
        holds it). A NaN or infinite loss or parameter stops training with
        errors.TrainingDiverged before anything is saved: the last good checkpoint is
        kept, and the log shows the rows up to the bad one."""
        if log_every < 1:
            raise ValueError(f"log_every must be positive, got {log_every}")
        end = self.total_iters if iters is None else iters
        if stop_after is not None:
            end = min(end, self.it + stop_after)
        own_lock = None
        if self.out_dir and getattr(self, "run_lock", None) is None:
            own_lock = self.run_lock = ckpt.RunLock(self.out_dir).acquire()
        try:
            if self.out_dir and getattr(self, "writes_files", True):   # torchrun: rank 0 only
                ckpt.remove_orphans(self.out_dir)
                self._log_rows_written = 0
                self.write_log()                       # the log as of the checkpoint
            # closed on any exit, so an error or Ctrl-C message starts on a line of its own
            with tqdm(total=end, initial=self.it, disable=not progress, desc=self.mode) as bar:
                while self.it < end:
                    row = self.outer_step()
                    tick()                     # threads follow the free CPU (runtime.py)
                    bad = self.diverged(row) or self.nonfinite_parameters()
                    if bad:
                        self._stop(bad, row)
                    bar.set_postfix(self.postfix(row), refresh=False)
                    bar.update(1)
                    if self.out_dir and self.checkpoint_due(end):
                        self.save()
                    elif self.out_dir and self.it % log_every == 0:
                        self.write_log(append=True)
        finally:
            if own_lock is not None:
                own_lock.release()
                self.run_lock = None
        return self.log

    def checkpoint_due(self, end: int) -> bool:
        """Save now? Every cfg.ckpt_every iterations and at the end of the session."""
        return self.it % self.cfg.ckpt_every == 0 or self.it == end

    def postfix(self, row: dict) -> dict:
        """The progress bar's numbers: the row's values of the SHOWN keys, formatted, left
        out where the row has none or NaN (a loss its phase does not compute)."""
        return {k: format(row[k], spec) for k, spec in self.SHOWN.items()
                if k in row and not math.isnan(row[k])}

    def diverged(self, row: dict) -> str:
        """'' if the row's losses (loss_keys) are finite, else which are not, with values."""
        return ", ".join(f"{k} = {row[k]}" for k in self.loss_keys(row) if not math.isfinite(row[k]))

    def nonfinite_parameters(self) -> str:
        """'' when every watched tensor (codes, network and EMA weights) is finite, else
        which are not. One sum per tensor and one device sync: cheap enough for every
        iteration."""
        parts = self.watched()
        tensors = [t for part in parts.values()
                   for t in (part.parameters() if isinstance(part, nn.Module) else part.values())]
        if torch.isfinite(torch.stack([t.detach().sum() for t in tensors]).sum()):
            return ""
        bad = ckpt.nonfinite({name: part.state_dict() if isinstance(part, nn.Module) else part
                              for name, part in parts.items()})
        return f"non-finite parameters {', '.join(bad[:5])}" if bad else ""

    def _stop(self, what: str, row: dict):
        """Raise TrainingDiverged, after writing the log up to the bad row."""
        if self.out_dir:
            self.write_log(append=True)
        kept = (f"the last good checkpoint {self.ckpt_path()} is untouched"
                if self.out_dir and os.path.exists(self.ckpt_path()) else "nothing was saved")
        phase = f" ({row['phase']})" if "phase" in row else ""
        raise TrainingDiverged(
            f"training diverged at iteration {self.it}{phase}: {what}; {kept}. "
            f"Lower the learning rates (e.g. --set {self.LR_EXAMPLE}=...) and train into a new --out, "
            "or resume the run with --resume")

    # ---------------------------------------------------------- checkpoints ------
    def check_checkpoint(self, sd: dict, path: str) -> None:
        """CheckpointError naming `path` unless sd is a whole, finite checkpoint of this
        run: format, every STATE_KEYS entry, config, SAME_AS_RUN entries (data: same_data),
        iteration within the schedule."""
        missing = [k for k in self.STATE_KEYS if k not in sd]
        if sd.get("format") != self.FORMAT:
            raise ckpt.CheckpointError(f"{path}: format {sd.get('format')!r}, expected {self.FORMAT!r}")
        if missing:
            raise ckpt.CheckpointError(f"{path}: incomplete checkpoint, no {', '.join(missing)}")
        if not isinstance(sd["config"], dict):
            raise ckpt.CheckpointError(f"{path}: 'config' is a {type(sd['config']).__name__}, "
                                       "expected a dict of config fields")
        ckpt.check_config(path, sd["config"], self.cfg.to_dict())
        for key in self.SAME_AS_RUN:
            want = getattr(self, key)
            if key == "data_id" and same_data(sd[key], want):
                continue
            if sd[key] != want:
                raise ckpt.CheckpointError(f"{path}: made with {key}={sd[key]!r}, "
                                           f"this run has {key}={want!r}")
        it = sd[self.ITER_KEY]
        if not isinstance(it, int) or isinstance(it, bool) or it < 0:
            raise ckpt.CheckpointError(f"{path}: iteration {it!r} is not a count of iterations")
        if it > self.total_iters:
            raise ckpt.CheckpointError(
                f"{path}: the run is already at iteration {it}, past the end this run asks for "
                f"({self.schedule_note()}); resume with --iters {self.iters_to_reach(it)} or more")
        bad = ckpt.nonfinite(sd)
        if bad:
            raise ckpt.CheckpointError(f"{path}: holds non-finite values ({', '.join(bad[:5])})")

    def schedule_note(self) -> str:
        return f"iters {self.cfg.iters}"

    def iters_to_reach(self, it: int) -> int:
        """The --iters that takes the schedule to iteration `it`."""
        return it

    def load_parts(self, sd: dict, path: str, loaders: dict) -> None:
        """Call loaders[part] on sd[part] for each part in order, then the iteration count and the
        log; a part that does not fit this trainer (another shape, a missing key) is
        refused naming the file and the part."""
        part = None
        try:
            for part, load in loaders.items():
                load(sd[part])
            part = "log"
            self.it, self.log = sd[self.ITER_KEY], list(sd["log"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ckpt.CheckpointError(f"{path}: its {part!r} does not fit this run "
                                       f"({type(e).__name__}: {str(e).splitlines()[0]})") from None

    def ckpt_path(self) -> str:
        return os.path.join(self.out_dir, "checkpoint.pt")

    def log_path(self) -> str:
        return os.path.join(self.out_dir, "log.jsonl")

    def save(self) -> str:
        """Write checkpoint.pt and log.jsonl atomically; refuse (TrainingDiverged) when any
        tensor (parameters, EMAs, optimiser moments) is NaN or infinite, so the last good
        checkpoint is never replaced."""
        sd = self.state_dict()
        bad = ckpt.nonfinite(sd)
        if bad:
            self._stop(f"non-finite parameters {', '.join(bad[:5])}",
                       self.log[-1] if self.log else {"iter": self.it})
        path = ckpt.save_atomic(self.ckpt_path(), sd)
        self.write_log()
        return path

    def write_log(self, append: bool = False) -> None:
        """log.jsonl: the whole log (atomically), or only the rows not yet written."""
        done = getattr(self, "_log_rows_written", 0)
        if append and done <= len(self.log):
            append_log(self.log_path(), self.log[done:])
        else:
            write_log(self.log_path(), self.log)
        self._log_rows_written = len(self.log)

    def resume(self) -> bool:
        """Continue from out_dir/checkpoint.pt when it exists; True if resumed."""
        path = self.ckpt_path()
        if not os.path.exists(path):
            return False
        self.load_state_dict(ckpt.load(path, map_location=self.device), path)
        return True


class Resumable(ResumableLoop):
    """Mixin of train.Trainer: its checkpoint's contents and its divergence test."""
    FORMAT, STATE_KEYS, SAME_AS_RUN = FORMAT, STATE_KEYS, ("mode", "data_id")
    SHOWN = {"loss_rend": ".4g", "loss_diff": ".4g"}

    def loss_keys(self, row: dict) -> tuple:
        """The losses of a row that must be finite. Missing losses are NaN by design and
        not divergence: loss_rend in stage 2, loss_diff in stage 1, loss_diff_extra when
        cfg.diff_steps == 1."""
        keys = {"single-stage": ("loss_rend", "loss_diff"), "stage1": ("loss_rend",),
                "stage2": ("loss_diff",)}[row["phase"]]
        if self.cfg.diff_steps > 1 and row["phase"] != "stage1":
            keys += ("loss_diff_extra",)
        return keys

    def watched(self) -> dict:
        return {"bank": {"codes_": self.bank.codes_}, **{name: getattr(self, name) for name in MODULES}}

    def state_dict(self) -> dict:
        return {"format": FORMAT, "config": self.cfg.to_dict(), "mode": self.mode,
                "data_id": self.data_id, "iter": self.it,
                "bank": self.bank.state_dict(), "occupancy": self.occupancy.state_dict(),
                "decoder": self.decoder.state_dict(),
                "prior": self.prior.state_dict(), "opt_dec": self.opt_dec.state_dict(),
                "opt_prior": self.opt_prior.state_dict(),
                "ema_decoder": self.ema_decoder.state_dict(),
                "ema_prior": self.ema_prior.state_dict(),
                "mean_code": self.mean_code.cpu(), "rng": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
                "log": self.log}

    def schedule_note(self) -> str:
        return f"iters {self.cfg.iters}" + (" x 2 stages" if self.mode == "two-stage" else "")

    def iters_to_reach(self, it: int) -> int:
        return -(-it // (self.total_iters // self.cfg.iters))

    def load_state_dict(self, sd: dict, path: str = "<checkpoint>"):
        """Check sd (check_checkpoint), then load it part by part (load_parts)."""
        self.check_checkpoint(sd, path)
        self.load_parts(sd, path, {
            "bank": self.bank.load_state_dict,
            "occupancy": lambda s: setattr(self, "occupancy", OccupancyGrid.from_state_dict(s, self.device)),
            **{part: getattr(self, part).load_state_dict
               for part in ("decoder", "prior", "opt_dec", "opt_prior", "ema_decoder", "ema_prior")},
            "mean_code": lambda s: setattr(self, "mean_code", s.to(self.device)),
            "rng": self.gen.set_state, "torch_rng": lambda s: torch.set_rng_state(s.cpu())})


def same_data(saved: str, wanted: str) -> bool:
    """Data ids ('folder:N:fingerprint') match when the scene count and the content's
    fingerprint do: the folder's name is only a label, so a byte-identical copy of the
    data elsewhere resumes. A checkpoint written before fingerprints ('folder:N')
    matches the same folder name and count."""
    old, new = saved.rsplit(":", 2), wanted.rsplit(":", 2)
    if len(old) == 3 and len(new) == 3:
        return old[1:] == new[1:]
    return saved == wanted or (len(old) == 2 and wanted.startswith(saved + ":"))
