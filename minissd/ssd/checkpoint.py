"""Checkpoints: atomic writes, safe loads, clear errors.

Nothing a long run has learned may be lost to a crash, a full disk or Ctrl-C:
  * `save_atomic` writes to a temporary file in the same folder, flushes it to disk and
    only then renames it over the target (`os.replace` is atomic on POSIX and Windows),
    so a reader sees either the old checkpoint or the new one, never half of one.
  * `load` uses `torch.load(weights_only=True)`: a checkpoint is plain tensors, numbers,
    strings, lists and dicts, so loading one cannot run code.
  * `load` also checks the CRC-32 of every member of the zip archive that torch.save
    writes (every checkpoint ever written has them), so a damaged file is refused
    instead of loading with changed weights; `nonfinite` finds NaN/inf tensors.
  * `check_config` compares the config stored in a checkpoint with the one a run asks
    for and names every field that differs.
  * `RunLock` is an exclusive lock on a run folder: one trainer per folder; its lock
    file is opened without following symbolic links (a link is refused, never written).
"""
from __future__ import annotations

import errno
import os
import stat
import zipfile

import torch

from minissd.errors import RunLocked
from minissd.utils import TMP_PREFIX, remove_quietly, umask_mode, write_atomic  # noqa: F401

LOCK_NAME = ".lock"

# fields that may change between a run and its resumption without changing the model
RESUMABLE_FIELDS = ("iters", "ckpt_every")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or made with another config."""


def save_atomic(path: str, obj: dict) -> str:
    """torch.save `obj` to `path` atomically (temporary file, fsync, rename)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def remove_orphans(folder: str) -> list[str]:
    """Delete the temporary files of writes that were killed half-way (call it while
    holding the folder's RunLock, so no live write is touched). Returns their paths."""
    gone = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path):
            remove_quietly(path)
            gone.append(path)
    return gone


def nonfinite(obj, prefix: str = "") -> list[str]:
    """The keys ('decoder.net.0.weight', ...) of every floating tensor in a nested
    dict/list holding a NaN or an infinity."""
    if torch.is_tensor(obj):
        return [prefix or "<tensor>"] if obj.is_floating_point() and not torch.isfinite(obj).all() else []
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in nonfinite(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in nonfinite(v, f"{prefix}[{i}]")]
    return []


def check_archive(path: str) -> None:
    """Raise CheckpointError when a torch zip archive is damaged (a CRC-32 mismatch or
    a broken zip structure). Files in torch's legacy (non-zip) format are not checked."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint file ({e})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint file (checksum mismatch in {bad}); "
                              "restore it from a backup or retrain")


def load(path: str, map_location="cpu") -> dict:
    """Load a minissd checkpoint safely; raise CheckpointError naming the file if unusable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    check_archive(path)
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


class RunLock:
    """An exclusive lock on a run folder (fcntl.flock on FOLDER/.lock), so that two
    trainers never write the same checkpoint. Released on release(), on exit of a `with`
    block, or when the process dies.

        with RunLock(out_dir):
            ...                                   # RunLocked if another process holds it
    """

    def __init__(self, folder: str):
        self.folder, self.path, self.fd = folder, os.path.join(folder, LOCK_NAME), None

    def acquire(self) -> "RunLock":
        import fcntl
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise RunLocked(f"{self.folder}: exists and is not a folder")
        os.makedirs(self.folder, exist_ok=True)
        try:               # never follow a link: the lock must not write into another file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                         umask_mode())
        except OSError as e:
            if os.path.islink(self.path) or e.errno == errno.ELOOP:
                raise RunLocked(f"{self.path}: is a symbolic link, not minissd's lock file; "
                                "remove it (nothing it points to was touched)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunLocked(f"{self.path}: is not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLocked(f"{self.folder} is in use by another training run"
                            f"{' (process ' + holder + ')' if holder else ''}: wait for it to "
                            f"finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
