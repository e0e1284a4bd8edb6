"""Small idioms every part of minissd uses, written once.

  * random draws from an optional `torch.Generator` that lives on its own device (a CPU
    generator drives CUDA tensors too, so a seed gives the same numbers on any device):
    `randn`, `rand`, `randint`, `randperm`, `randn_like`;
  * `per_sample(a, x)`: a per-sample value a (B,) shaped to broadcast over x (B, ...);
  * `to_device(d, device)`: the tensors of a data dict moved, everything else kept;
  * `evenly_spaced(n, k)`: k indices spread over range(n), first and last included;
  * `clip_x0(x, clip)`: the clean-code estimate clipped to the code range +-2 (2 tanh);
  * `write_atomic(path, write)`: write beside `path`, fsync, rename over it;
  * `count_calls(module)`: how many times a network ran inside a `with` block (the
    gradient-caching experiment and the tests count denoiser passes with it).
"""
from __future__ import annotations

import contextlib
import os
import tempfile

import torch

TMP_PREFIX = ".tmp-"     # temporary files of write_atomic (checkpoint.py removes orphans)


# ------------------------------------------------------------------ random draws ----
def _gen_device(generator: torch.Generator | None, device) -> torch.device:
    """Draw on the generator's device (it can only fill tensors there), else on device."""
    return generator.device if generator is not None else torch.device(device)


def randn(shape, generator=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=_gen_device(generator, device),
                       dtype=dtype).to(device)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from `generator` (on its own device)."""
    if generator is None:
        return torch.randn_like(x)
    return randn(x.shape, generator, x.device, x.dtype)


def rand(shape, generator=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_gen_device(generator, device),
                      dtype=dtype).to(device)


def randint(high: int, shape, generator=None, device="cpu") -> torch.Tensor:
    return torch.randint(high, shape, generator=generator,
                         device=_gen_device(generator, device)).to(device)


def randperm(n: int, generator=None, device="cpu") -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=_gen_device(generator, device)).to(device)


# ------------------------------------------------------------------------- misc ----
def per_sample(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """a (B,) -> (B, 1, ..., 1) in x's dtype, to scale each sample of x (B, ...)."""
    return a.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def to_device(d: dict, device) -> dict:
    """The tensors of dict d moved to device; other values (names, ids) as they are."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in d.items()}


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included ([0] for k = 1);
    all of range(n) when k <= 0 or k >= n."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


def clip_x0(x0: torch.Tensor, clip: float | None) -> torch.Tensor:
    """x0 clipped to [-clip, clip] (codes are 2 tanh(code_), so clip = 2); 0/None: as is."""
    return x0.clamp(-clip, clip) if clip else x0


def umask_mode(mode: int = 0o666) -> int:
    """`mode` less the process umask: the permissions open() would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomic(path: str, write, binary: bool = True) -> str:
    """Call write(file) on a uniquely named temporary file beside `path`, fsync it, give it
    the user's normal permissions and rename it over `path`; nothing is left behind on
    failure. An OSError (a full disk) is re-raised naming `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise OSError(e.errno, f"{e.strerror or e} (writing {path})", path) from e
    except BaseException:
        remove_quietly(tmp)
        raise
    return path


class CallCount:
    n = 0


@contextlib.contextmanager
def count_calls(module: torch.nn.Module):
    """`with count_calls(prior.unet) as c: ...` -> c.n = forward passes of module inside."""
    counter = CallCount()

    def hook(*_):
        counter.n += 1
    handle = module.register_forward_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()
