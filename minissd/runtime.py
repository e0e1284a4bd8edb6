"""How minissd uses the machine: mixed precision (`cfg.amp`) and CPU threads.

Neither is part of the paper; both decide how fast an outer iteration of Algorithm 1 runs.

Mixed precision. `cfg.amp` is "off" (fp32), "bf16", "fp16" or "auto". Under "bf16" the
denoiser phi (prior/diffusion.py `DiffusionPrior.forward`) and the decoder MLP psi
(nerf/decoder.py) run their matrix products under `torch.autocast`; everything else stays
fp32: triplane sampling, volume-rendering compositing (render.py), the losses, the
optimisers and the weights themselves. "fp16" autocasts only the denoiser, on CUDA, with
a GradScaler on its loss (`GradScale`): the decoder's per-ray gradients are ~1e-6 and would
underflow fp16. "auto" picks bf16 where it is fast (a CUDA GPU with bf16, a CPU with AMX or
AVX512-BF16) and fp32 elsewhere. Models written before the field existed load as "off".

Threads. PyTorch's OpenMP pool uses every core it is given, and an OpenMP parallel region
ends at a barrier: when other processes take the cores, every region waits for its
descheduled thread while the waiting threads spin (GNU OpenMP, unless
OMP_WAIT_POLICY=PASSIVE), burning the CPU the late thread needs. Measured on 2 shared cores
(load ~15): the laptop UNet step took 14.5 s and 3.0 CPU-s with 2 spinning threads, 1.4 s
and 0.33 CPU-s with 2 passive threads, 1.4 s and 0.27 CPU-s with 1 thread (docs/speed.md).
`set_threads("auto")` uses the cores this process may run on (os.sched_getaffinity) minus
the ones other processes keep busy (the 1-minute load average), at least 1; minissd calls
it once, in `minissd/__init__.py`, unless MINISSD_THREADS says otherwise ("auto", a number,
or "torch" for PyTorch's own default), and sets OMP_WAIT_POLICY=PASSIVE when torch has not
been imported yet (sleeping instead of spinning at barriers).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

AMP_MODES = ("off", "bf16", "fp16", "auto")


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16 on this CPU (Linux /proc/cpuinfo flags; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def amp_dtype(mode: str, device) -> torch.dtype | None:
    """The autocast dtype of cfg.amp `mode` on `device` (None: fp32)."""
    if mode not in AMP_MODES:
        raise ValueError(f"config amp={mode!r}: must be one of {', '.join(AMP_MODES)}")
    kind = torch.device(device).type
    if mode == "auto":
        fast = (torch.cuda.is_available() and torch.cuda.is_bf16_supported() if kind == "cuda"
                else kind == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else None
    if mode == "fp16" and kind != "cuda":
        raise ValueError(f"config amp='fp16' needs a CUDA device (this run is on {kind}); "
                         "use amp='bf16' or 'auto'")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def autocast(mode: str, device, what: str = "denoiser"):
    """torch.autocast for `what` ("denoiser" or "decoder") under cfg.amp `mode`, or a
    no-op context (fp32). fp16 never reaches the decoder (see the module docstring)."""
    dtype = amp_dtype(mode, device)
    if dtype is None or (dtype == torch.float16 and what == "decoder"):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class GradScale:
    """Loss scaling for amp='fp16' (torch.amp.GradScaler), a pass-through otherwise.

    `factor` multiplies the loss before backward; `unscale(g)` divides a gradient the
    caller took itself (the cached prior gradient on the codes); `step(opt)` unscales
    the optimiser's gradients and skips the step when they overflowed."""

    def __init__(self, mode: str, device):
        on = amp_dtype(mode, device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if on else None

    @property
    def factor(self) -> float:
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())

    def unscale(self, g):
        return g if self.scaler is None or g is None else g / self.factor

    def step(self, opt) -> None:
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)
            self.scaler.update()


def auto_threads() -> int:
    """Cores this process may use minus the ones other processes keep busy, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def set_threads(spec: str | int = "auto") -> int:
    """Set torch's intra-op threads: "auto" (auto_threads), "torch" (leave PyTorch's
    default) or a number. Returns the thread count in use."""
    spec = str(spec).strip().lower()
    if spec != "torch":
        try:
            n = auto_threads() if spec == "auto" else int(spec)
        except ValueError:
            raise ValueError(f"MINISSD_THREADS / --threads {spec!r}: expected 'auto', 'torch' "
                             "or a positive number") from None
        if n < 1:
            raise ValueError(f"MINISSD_THREADS / --threads {spec!r}: must be at least 1")
        torch.set_num_threads(n)
    return torch.get_num_threads()
