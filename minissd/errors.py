"""Errors a user can cause and fix: the command line prints them as one line.

`python -m minissd ...` turns a `UserError` (and the `ValueError`s of the data loader,
`checkpoint.CheckpointError`, `OSError`s such as a full disk) into a single line naming
the file or argument, and a non-zero exit status; `--debug` shows the traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """A bad argument, file or folder; the message names it."""


class RunLocked(UserError):
    """Another process is training in this run folder."""


class TrainingDiverged(RuntimeError):
    """A loss or a parameter became NaN or infinite; the last good checkpoint is kept."""
