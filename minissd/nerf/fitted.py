"""A fitted auto-decoder (eq. 1): shipped, cached, or fitted now -- notebook 02's long fit.

Notebook 02's full mode fits 32 cars and one decoder by eq. (1) for 3000 iterations of 8
scenes x 512 rays (`train_autodecoder`), about half an hour of one CPU core: more than a
class can wait. As notebooks 05-08 load shipped SSDNeRF models (`ssd/model.py`
`load_or_train`), notebook 02 loads the result of the very same call from `assets/models/`:

    bank, decoder, log = load_or_fit(cfg, train, iters, data_id)

looks for KEY.pt shipped (`model_dirs()`) or cached (`cache_dir()/models`), where KEY names
everything that decides the result (`fit_key`: preset, training data, iterations, a digest of
the whole config), and otherwise runs `train_autodecoder(cfg, train, iters)` and caches what it
returns. `refit=True` always runs the fit (the notebook's "fit it yourself" switch). The fit
is deterministic: one generator seeded with cfg.seed draws everything (one torch thread, the
same CPU kind). `benchmarks/ship_autodecoder.py` runs it and writes the shipped file:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/ship_autodecoder.py

The file holds what the notebook uses after the fit: the codes (before the activation,
rounded to float16, which halves the file: about 1.3 MB for 32 laptop-size cars; the activated
codes move by at most ~1e-3), the per-scene Adam step counts, the occupancy grids (bit-packed),
the decoder (float32) and the training log. The codes' Adam moments are left out: nothing
continues the fit, and new codes (notebook 02's 3-view fit) start a bank of their own.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from minissd.config import Config, cache_dir
from minissd.nerf.autodecoder import train_autodecoder
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.triplane import CodeBank
from minissd.ssd.checkpoint import save_atomic
from minissd.ssd.model import config_digest, find_model_file

FORMAT = "minissd-autodecoder-1"


def fit_key(cfg: Config, data_id: str, iters: int, category: str = "cars") -> str:
    """File name (without .pt) of a fit: category, preset, data, iterations, config digest."""
    return f"{category}-autodecoder-{cfg.name}-{data_id}-{iters}it-{config_digest(cfg)}"


def data_id(root: str, n_views: int) -> str:
    """The key's name of the training data: the dataset folder and how many of its views
    (the first n_views) the fit saw, e.g. 'cars_train_n32_v60_r64_s0_f1-50v'."""
    return f"{os.path.basename(os.path.normpath(root))}-{n_views}v"


def pack(bank: CodeBank, decoder: TriplaneDecoder, log: list, cfg: Config, key: str) -> dict:
    """The file's content (module docstring): float16 codes, steps, packed grids, decoder."""
    occ = bank.occupancy
    return {"format": FORMAT, "key": key, "cfg": cfg.to_dict(),
            "codes_": bank.codes_.detach().cpu().half(),                    # (N, 3, C, R, R)
            "step": bank.step.cpu(),                                        # (N,) Adam steps
            "occupancy": None if occ is None else {
                "shape": tuple(occ.grid.shape), "bound": occ.bound,
                "bits": torch.from_numpy(np.packbits(occ.grid.cpu().numpy().ravel()))},
            "decoder": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
            "log": list(log)}


def unpack(blob: dict, cfg: Config, device="cpu"):
    """(bank, decoder, log) from pack()'s dict; the decoder in eval mode, as a fit ends."""
    if blob.get("format") != FORMAT:
        raise ValueError(f"{blob.get('key', 'file')}: not a fitted auto-decoder ({FORMAT})")
    codes_ = blob["codes_"].float()
    bank = CodeBank(codes_.shape[0], cfg.code_ch, cfg.code_res, device=device,
                    generator=torch.Generator())                         # global RNG untouched
    if tuple(codes_.shape) != bank.shape:
        raise ValueError(f"{blob['key']}: codes {tuple(codes_.shape)} do not fit the config's "
                         f"{bank.shape}")
    bank.codes_, bank.step = codes_.to(bank.device), blob["step"].to(bank.device)
    occ = blob["occupancy"]
    if occ is not None:
        n = int(np.prod(occ["shape"]))
        bits = np.unpackbits(occ["bits"].numpy())[:n].reshape(occ["shape"]).astype(bool)
        bank.occupancy = OccupancyGrid(torch.from_numpy(bits).to(bank.device), occ["bound"])
    decoder = TriplaneDecoder.from_config(cfg)
    decoder.load_state_dict(blob["decoder"])
    return bank, decoder.to(device).eval(), list(blob["log"])


def load_fit(path: str, cfg: Config, device="cpu"):
    """(bank, decoder, log) of a fit file written by save_fit; a ValueError naming the file
    when it is not one (tensors and plain containers only: weights_only loading)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # missing, truncated, or not a torch file
        raise ValueError(f"{path}: not a fitted auto-decoder ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: not a fitted auto-decoder ({FORMAT})")
    return unpack(blob, cfg, device)


def save_fit(path: str, bank: CodeBank, decoder: TriplaneDecoder, log: list, cfg: Config,
             key: str) -> str:
    """Write a fit atomically (temporary file, then rename); returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save_atomic(path, pack(bank, decoder, log, cfg, key))


def load_or_fit(cfg: Config, train: dict, iters: int, data_id: str, refit: bool = False,
                log_every: int = 10, progress: bool = True, device="cpu"):
    """(bank, decoder, log) of `train_autodecoder(cfg, train, iters, log_every=log_every)`:
    the shipped or cached file of fit_key(cfg, data_id, iters) unless `refit`, else fitted
    now and cached (cache_dir()/models/KEY.pt). data_id must name the training data
    (scenes and views): it is part of the key."""
    key = fit_key(cfg, data_id, iters)
    path = None if refit else find_model_file(key)
    if path:
        print(f"[minissd] loaded the fitted auto-decoder {os.path.basename(path)} "
              f"(refit=True fits it here)", flush=True)
        return load_fit(path, cfg, device)
    if not refit:
        print(f"[minissd] no shipped or cached fit {key}.pt: fitting it now ({iters} iterations)",
              flush=True)
    bank, decoder, log = train_autodecoder(cfg, train, iters, device=device, log_every=log_every,
                                           progress=progress)
    save_fit(os.path.join(cache_dir(), "models", key + ".pt"), bank, decoder, log, cfg, key)
    return bank, decoder, log
