"""minissd: a small, readable PyTorch reference implementation of Single-Stage
Diffusion NeRF (Chen et al., ICCV 2023). README.md maps the paper's equations and
Algorithm 1 to functions; docs/modules.md lists every module.
Importing minissd sets torch's CPU threads for the whole package (training, sampling,
notebooks): runtime.set_threads with $MINISSD_THREADS ("auto" by default: the cores not
kept busy by other processes, re-decided during long loops by runtime.tick(); "torch"
leaves PyTorch's default, as does an explicit OMP_NUM_THREADS). See runtime.py for why.
"""
import os
import sys

if "torch" not in sys.modules and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
    os.environ["GOMP_SPINCOUNT"] = "300000"  # read when torch loads: spin ~3 ms, then sleep

from minissd.runtime import set_threads  # noqa: E402

__version__ = "0.1.0"
set_threads(os.environ.get("MINISSD_THREADS")
            or ("torch" if "OMP_NUM_THREADS" in os.environ else "auto"))
