"""Checkpoints: atomic writes, safe loads, clear errors.

Nothing a long run has learned may be lost to a crash, a full disk or Ctrl-C:
  * `save_atomic` writes to a temporary file in the same folder, flushes it to disk and
    only then renames it over the target (`os.replace` is atomic on POSIX and Windows),
    so a reader sees either the old checkpoint or the new one, never half of one.
  * `load` uses `torch.load(weights_only=True)`: a checkpoint is plain tensors, numbers,
    strings, lists and dicts, so loading one cannot run code.
  * `check_config` compares the config stored in a checkpoint with the one a run asks
    for and names every field that differs.
"""
from __future__ import annotations

import os
import tempfile

import torch

# fields that may change between a run and its resumption without changing the model
RESUMABLE_FIELDS = ("iters", "ckpt_every")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or made with another config."""


def save_atomic(path: str, obj: dict) -> str:
    """torch.save `obj` to `path` atomically (temporary file, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load(path: str, map_location="cpu") -> dict:
    """Load a minissd checkpoint safely; raise CheckpointError naming the file if unusable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, corrupted, or not a torch file at all
        raise CheckpointError(
            f"{path}: not a readable minissd checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or "config" not in obj or "format" not in obj:
        raise CheckpointError(f"{path}: a torch file, but not a minissd checkpoint "
                              "(no 'format'/'config' entries)")
    return obj


def config_diff(saved: dict, wanted: dict, ignore=RESUMABLE_FIELDS) -> dict:
    """{field: (saved, wanted)} for every config field that differs."""
    keys = (set(saved) | set(wanted)) - set(ignore)
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return {k: (saved.get(k), wanted.get(k)) for k in sorted(keys)
            if norm(saved.get(k)) != norm(wanted.get(k))}


def check_config(path: str, saved: dict, wanted: dict, ignore=RESUMABLE_FIELDS) -> None:
    """Raise CheckpointError listing the differences when `saved` != `wanted`."""
    diff = config_diff(saved, wanted, ignore)
    if diff:
        lines = "\n".join(f"  {k}: checkpoint has {a!r}, this run asks for {b!r}"
                          for k, (a, b) in diff.items())
        raise CheckpointError(
            f"{path} was made with a different config:\n{lines}\n"
            "Use the same preset/options to resume, or a new --out folder to start afresh.")
