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
`set_threads("auto")` starts a ThreadGovernor: threads = the cores this process may run on
(os.sched_getaffinity) minus the ones other processes keep busy, at least 1: guessed when
minissd is imported from the tasks runnable at that instant (/proc/loadavg, no waiting), then
measured from /proc/stat over the last few seconds whenever a long loop calls `tick()`
(training, the baselines' trainers, DDIM sampling), so a competitor that starts or stops
mid-run changes the count within a few iterations.
minissd calls set_threads once, in `minissd/__init__.py`, with MINISSD_THREADS ("auto", a
number, or "torch" for PyTorch's own default; a number or "torch" is never changed), and,
when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set and torch has not been imported yet,
sets GOMP_SPINCOUNT=300000 (GNU OpenMP's own default, ~3 ms of spinning, then sleep): with
the governor taking a thread away when a competitor appears, spinning briefly is safe, and
on an idle machine it is what makes 2 threads pay (laptop iteration, idle: 1.51 s with it,
2.65 s with OMP_WAIT_POLICY=PASSIVE; docs/speed.md).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import time

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


def usable_cores() -> int:
    """The CPUs this process may run on (os.sched_getaffinity where it exists)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_for(cores: int, others: float) -> int:
    """The cores other processes leave free, rounded half up, between 1 and `cores`."""
    return max(1, min(cores, int(cores - max(0.0, others) + 0.5)))


def load_average() -> tuple:
    """os.getloadavg(), or zeros where there is none (Windows) or it cannot be read."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def read_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds all processes have spent on the CPUs this process may use, since boot
    (Linux /proc/stat: user+nice+system+irq+softirq+steal of each `cpuN` line); None where
    the file is missing or lists none of them (macOS, Windows, some containers)."""
    try:
        with open(path) as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    jiffies = [sum(int(v) for v in (f[1:4] + f[6:9])) for f in lines
               if mine is None or int(f[0][3:]) in mine]
    return sum(jiffies) / os.sysconf("SC_CLK_TCK") if jiffies else None


def read_running_others(path: str = "/proc/loadavg") -> float | None:
    """Other tasks runnable right now, as busy cores among the ones this process may use:
    (the 4th field of /proc/loadavg, "running/total", minus this process's reading thread)
    x usable cores / all cores (runnable tasks counted machine-wide, assumed spread evenly).
    An instantaneous count, so it needs no waiting (/proc/stat needs two reads some time
    apart); None where the file is missing or unreadable (macOS, Windows)."""
    try:
        with open(path) as f:
            running = int(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None
    return max(0, running - 1) * usable_cores() / max(os.cpu_count() or 1, usable_cores())


class ThreadGovernor:
    """Keep torch's threads at the cores other processes leave free, during the run.

    Why: an OpenMP parallel region ends at a barrier, so one descheduled thread stalls all
    of them (see the module docstring and docs/speed.md): a thread more than the free cores
    costs far more than the core it would add. What: over a window of at least `every`
    seconds, others = (busy CPU seconds of this process's CPUs in /proc/stat - this
    process's own CPU seconds) / wall seconds, and threads = cores - others rounded, at
    least 1. The first decision (`start`, at import) cannot wait for a window: it takes
    others = the tasks runnable at that instant (`read_running_others`). Hysteresis: the
    count changes only when cores - others is `band` or more away from it (2 threads on 2
    cores stay until other processes take 0.55 of a core; a competitor that shares the 2
    cores with our 2 threads gets at least 2/3 of one). Without /proc/stat, others = the
    1-minute load average minus this process's own CPU use (and, without /proc/loadavg,
    the load average at start). The readers and `apply` are arguments so that tests can
    feed fake readings."""

    def __init__(self, cores: int | None = None, every: float = 2.0, band: float = 0.55,
                 read_busy=read_busy_seconds, read_own=time.process_time, clock=time.monotonic,
                 read_running=read_running_others, loadavg=load_average,
                 apply=torch.set_num_threads, current=torch.get_num_threads):
        self.cores = cores or usable_cores()
        self.every, self.band = every, band
        self.read_busy, self.read_own, self.clock = read_busy, read_own, clock
        self.read_running, self.loadavg = read_running, loadavg
        self.apply, self.current = apply, current
        self.threads: int | None = None             # None until start(); 0 after someone else set them
        self.history = collections.deque(maxlen=256)  # (others, threads) of each decision
        self._mark()

    def _mark(self):
        self._t, self._busy, self._own = self.clock(), self.read_busy(), self.read_own()

    def others(self) -> float:
        """Cores other processes kept busy since the last mark (and set a new mark)."""
        t0, busy0, own0 = self._t, self._busy, self._own
        self._mark()
        wall, own = max(self._t - t0, 1e-6), self._own - own0
        if busy0 is None or self._busy is None:
            return max(0.0, self.loadavg()[0] - own / wall)
        return max(0.0, (self._busy - busy0 - own) / wall)

    def decide(self, others: float) -> int:
        """The thread count for `others` busy cores, with the hysteresis band."""
        free = self.cores - others
        if self.threads is None or abs(free - self.threads) >= self.band:
            self.threads = threads_for(self.cores, others)
        self.history.append((round(others, 3), self.threads))
        return self.threads

    def start(self) -> int:
        """The first decision, without waiting: the tasks runnable now (not the lagging load
        average, which still holds the previous job); the first `tick()` at least `every`
        seconds later measures /proc/stat over the time since."""
        self._mark()
        running = self.read_running()
        self.apply(self.decide(self.loadavg()[0] if running is None else running))
        return self.threads

    def tick(self) -> int:
        """Re-decide if `every` seconds have passed (cheap otherwise); stop for good if
        someone else changed torch's threads since. Returns the thread count in use."""
        if not self.threads or self.clock() - self._t < self.every:
            return self.current()
        if self.current() != self.threads:
            self.threads = 0                                 # set elsewhere: leave it alone
            return self.current()
        before = self.threads
        if self.decide(self.others()) != before:
            self.apply(self.threads)
        return self.threads


_governor: ThreadGovernor | None = None


def tick() -> int:
    """Once per iteration of a long loop (training, sampling): let the governor follow
    the free CPU. A no-op unless threads are "auto" (MINISSD_THREADS or --threads)."""
    return _governor.tick() if _governor is not None else torch.get_num_threads()


def set_threads(spec: str | int = "auto") -> int:
    """Set torch's intra-op threads: "auto" (a ThreadGovernor: the cores other processes
    leave free, re-decided by tick()), "torch" (leave PyTorch's default) or a number.
    Returns the thread count in use."""
    global _governor
    spec = str(spec).strip().lower()
    if spec == "auto":
        _governor = ThreadGovernor()
        _governor.start()
    elif spec != "torch":
        try:
            n = int(spec)
        except ValueError:
            raise ValueError(f"MINISSD_THREADS / --threads {spec!r}: expected 'auto', 'torch' "
                             "or a positive number") from None
        if n < 1:
            raise ValueError(f"MINISSD_THREADS / --threads {spec!r}: must be at least 1")
        _governor = None
        torch.set_num_threads(n)
    else:
        _governor = None
    return torch.get_num_threads()
