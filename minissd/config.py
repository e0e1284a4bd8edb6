"""Presets: every size and rate of a minissd run in one dataclass.

The paper's numbers (its implementation details and the official configs, e.g.
configs/paper_cfgs/ssdnerf_cars_uncond.py) live in the `paper` preset; `gpu` keeps
the paper's data sizes (128x128 images, R=128 triplanes) with a lighter denoiser;
`laptop` is what a class trains on 2 CPU cores (64x64 images, R=32, about 45 minutes a model);
`smoke` is what the tests and `MINISSD_FAST=1` notebooks run (32x32, R=16: a model trains
in well under a minute, and the shipped ones in assets/models/ load in milliseconds).

    cfg = get_preset("laptop", iters=2000)      # overrides by keyword
    cfg = preset_for_notebook()                 # smoke under MINISSD_FAST=1, else laptop/gpu

A config is plain data: `asdict(cfg)` is stored in every checkpoint, and loading a
checkpoint made with a different config raises a clear error (see checkpoint.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
import json
import math
import os

import torch


@dataclass(frozen=True)
class Config:
    name: str = "laptop"
    # --- data --------------------------------------------------------------------
    image_res: int = 64            # images are resized to image_res x image_res
    views_per_scene: int = 0       # 0 = every view; 3 = the paper's sparse setting
    data_scenes: int = 64          # size of the built-in procedural training set
    data_views: int = 50           # views per built-in training scene (SRN: 50)
    # --- triplane code x_i (official `code_size`, base_nerf.py `TanhCode`) ----------
    code_ch: int = 6               # C: channels per plane (paper: 6)
    code_res: int = 32             # R: plane resolution (paper: 128)
    code_reg: float = 3e-3         # L2 penalty on the code, added to the rendering loss (official
                                   # reg_loss weight, configs/paper_cfgs/ssdnerf_cars_uncond.py)
    # --- decoder psi and renderer (official decoders/triplane_decoder.py) ----------
    dec_hidden: int = 64
    n_samples: int = 64            # samples per ray (uniform / stratified)
    near_min: float = 0.2
    occ_grid_res: int = 32         # per-scene occupancy grid for empty-space skipping
    occ_threshold: float = 0.1     # density below which a cell counts as empty (official: 0.1)
    occ_warmup: int = 100          # training: grids stay full for this many iterations
    # --- training batch ------------------------------------------------------------
    scenes_per_batch: int = 8
    rays_per_scene: int = 1024
    lr_code: float = 1e-2
    lr_decoder: float = 1e-3
    lr_denoiser: float = 1e-4
    warmup: int = 100              # linear LR warm-up (iterations) for the networks
    c_rend: float = 40.0           # lambda_rend = c_rend * (1 - exp(-0.1 N_v)) on the per-ray mean
                                   # of 0.5 ||y - y_hat||^2 (no 1/N_v: the mean has it); 40 is the
                                   # official 20 x 3 x per-channel MSE (eq. 1, autodecoder.py)
    stage1_tv: float = 1.0         # two-stage baseline, stage 1: TV^1.5 code regulariser weight
                                   # (official stage-1 configs), instead of code_reg
    # --- diffusion prior phi (paper eq. 2-3; official diffusions/gaussian_diffusion.py)
    T: int = 1000
    schedule: str = "linear"       # "linear" (paper) or "cosine"
    omega: float = 0.5             # w(t) = (alpha/sigma)^(2 omega)
    c_diff: float = 4.0            # lambda_diff = c_diff / EMA(mean(x0^2))
    unet_base: int = 32
    unet_mults: tuple = (1, 2, 2)
    unet_res_blocks: int = 1
    unet_attn_res: tuple = (8,)    # feature-map resolutions that get self-attention
    unet_groups: int = 8           # GroupNorm groups
    unet_dropout: float = 0.0      # dropout in UNet res-blocks (official: 0.1)
    x0_ema_momentum: float = 1e-3  # EMA momentum of mean(x0^2) for lambda_diff (official)
    ddim_steps: int = 50
    ema_beta: float = 0.995
    ema_rampup: float = 0.05       # EMA half-life ramps up as rampup x iteration (official; 0 = off)
    # --- denoiser updates per outer iteration (the laptop recipe, train.py) ----------
    diff_steps: int = 1            # denoiser updates per outer iteration: the first is Algorithm 1
                                   # lines 4-5 (its code gradient is the cached prior gradient), the
                                   # other diff_steps - 1 train phi on detached codes of all scenes
    diff_batch: int = 0            # scenes per extra denoiser update (0 = scenes_per_batch)
    # --- single-stage schedule (paper Algorithm 1; official diffusion_nerf.py) -------
    iters: int = 3000
    k_in_schedule: tuple = ((0, 16), (200, 4), (2000, 2))  # (from_iter, K_in)
    ckpt_every: int = 500
    seed: int = 0
    # --- speed (runtime.py) ----------------------------------------------------------
    amp: str = "off"               # mixed precision of the denoiser and decoder MLP: "off" (fp32),
                                   # "bf16", "fp16" (CUDA, denoiser only) or "auto" (bf16 where fast)

    def k_in(self, it: int) -> int:
        """K_in for outer iteration `it` (0-based), following k_in_schedule."""
        k = self.k_in_schedule[0][1]
        for start, value in self.k_in_schedule:
            if it >= start:
                k = value
        return k

    def to_dict(self) -> dict:
        """The fields as plain data; a field added after models were shipped is left out
        at its LEGACY value, so old model keys, checkpoints and files stay valid."""
        d = asdict(self)
        return {k: v for k, v in d.items() if not (k in LEGACY and v == LEGACY[k])}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        fixed = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v)
                 if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fixed)

    def validate(self) -> "Config":
        """Raise ValueError naming the first field with an impossible value; returns self."""
        validate(self)
        return self


@dataclass(frozen=True)
class TestConfig:
    """Every test-time setting in one place: guided sampling (eq. 5, 6) and finetuning
    (eq. 7). Each model file stores one (`Model.test`); the command line overrides single
    fields (`--test-set lambda_gd=20`). It is NOT part of the training Config, so
    calibrating test time never changes a model's key. The defaults were chosen by the
    sweep in benchmarks/calibrate_testtime.py on a validation split (README).
    """
    __test__ = False               # not a pytest test class
    # --- image-guided sampling, eq. (5, 6) (guidance.py) ---------------------------------
    lambda_gd: float = 60.0        # guidance scale on the gradient of the per-pixel SUM of
                                   # 0.5 ||y - y_hat||^2 over the observed views (eq. 1's weight);
                                   # validation sweep 7.5/15/30/60/120 -> 60 (README)
    recon_steps: int = 0           # DDIM steps to reconstruct; 0 = 1.5 x cfg.ddim_steps (paper 75/50)
    guide_rays: int = 0            # observed rays rendered per guidance step; 0 = 4 x rays_per_scene
    # --- finetuning, eq. (7) (finetune.py) ----------------------------------------------
    ft_c_rend: float = 40.0        # lambda_rend = ft_c_rend (1 - exp(-0.1 N_v)) on the per-ray mean
    ft_c_diff: float = 4.0         # lambda'_diff = ft_c_diff / EMA(mean(x0^2)) (paper: 1; our
                                   # validation sweep 1/4/16 -> 4)
    ft_inner: int = 4              # inner Adam steps per denoiser pass (paper: 4)
    ft_lr_decay: float = 0.998     # lr x ft_lr_decay after every step (paper)
    ft_lr_scale: float = 0.3       # multiplies the schedule's learning rates (paper: 1; our
                                   # validation sweep 0.1/0.3/1 -> 0.3: at full rate Adam moves the
                                   # texels no view sees by a full step of the prior gradient alone)
    ft_schedule: tuple = ((1, 25, 5e-3), (2, 50, 1e-2), (4, 100, 2e-2), (8, 160, 4e-2),
                          (16, 200, 8e-2))   # (from n views, outer iterations, lr): the paper's
    ft_rays: int = 0               # rays per finetuning step; 0 = cfg.rays_per_scene

    def finetune_schedule(self, n_views: int) -> tuple[int, float]:
        """(outer iterations, lr) for n_views input views (the largest entry <= n_views)."""
        outer, lr = self.ft_schedule[0][1:]
        for v, o, r in self.ft_schedule:
            if n_views >= v:
                outer, lr = o, r
        return outer, lr * self.ft_lr_scale

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "TestConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown test-time keys {sorted(unknown)}; valid: {sorted(names)}")
        if isinstance(d.get("ft_schedule"), list):
            d["ft_schedule"] = tuple(tuple(x) for x in d["ft_schedule"])
        return cls(**d)

    def with_overrides(self, pairs) -> "TestConfig":
        """A copy with KEY=VALUE strings applied (`--test-set`), each parsed as JSON and
        type-checked against the field's default."""
        kinds = {f.name: type(f.default) for f in fields(self)}
        over = {}
        for pair in pairs or ():
            key, sep, raw = pair.partition("=")
            if not sep or key not in kinds:
                raise ValueError(f"--test-set {pair!r}: expected KEY=VALUE with KEY one of "
                                 f"{sorted(kinds)}")
            try:
                val = json.loads(raw)
            except json.JSONDecodeError:
                raise ValueError(f"--test-set {pair!r}: {raw!r} is not a number or JSON value")
            want = kinds[key]
            if want is float and isinstance(val, int) and not isinstance(val, bool):
                val = float(val)
            if want is tuple and isinstance(val, list):
                val = tuple(tuple(x) if isinstance(x, list) else x for x in val)
            if not isinstance(val, want) or isinstance(val, bool):
                raise ValueError(f"--test-set {pair!r}: {key} takes a {want.__name__}")
            over[key] = val
        return replace(self, **over)


# fields added after the shipped models, with the value files without them were made with
LEGACY = {"amp": "off"}


PRESETS = {
    # seconds on 2 CPU cores: tests and MINISSD_FAST notebooks
    "smoke": Config(
        name="smoke", image_res=32, data_scenes=8, data_views=12, code_ch=6, code_res=16, dec_hidden=32, n_samples=32,
        occ_grid_res=16, occ_warmup=5, scenes_per_batch=4, rays_per_scene=256, warmup=5,
        unet_base=16, unet_mults=(1, 2), unet_res_blocks=1, unet_attn_res=(8,),
        unet_groups=4, ddim_steps=10, ema_beta=0.9, iters=200, lr_denoiser=1e-3,
        k_in_schedule=((0, 4), (10, 2)), ckpt_every=10, diff_steps=2),
    # minutes on 2 CPU cores: the class's own runs
    # diff_steps/diff_batch: 4 denoiser updates per outer iteration (3 of them on 16 detached
    # codes) so the prior gets ~58K code samples in 1000 iterations instead of 8K (train.py)
    "laptop": Config(name="laptop", rays_per_scene=512, n_samples=48, lr_denoiser=1e-3,
                     warmup=50, iters=1000, k_in_schedule=((0, 4), (100, 2)), ckpt_every=250,
                     diff_steps=4, diff_batch=16),
    # the paper's data sizes on one GPU, with a lighter denoiser
    "gpu": Config(
        name="gpu", image_res=128, data_scenes=512, code_res=128, n_samples=128, occ_grid_res=64,
        scenes_per_batch=16, rays_per_scene=4096, lr_code=5e-3, warmup=500,
        unet_base=64, unet_mults=(1, 2, 2, 4, 4), unet_res_blocks=2,
        unet_attn_res=(32, 16, 8), unet_groups=32, ema_beta=0.997, iters=100_000,
        k_in_schedule=((0, 16), (2000, 4), (100_000, 2)), ckpt_every=2000),
    # mirrors the official SRN cars generation configuration (configs/paper_cfgs/ssdnerf_cars_uncond.py)
    "paper": Config(
        name="paper", image_res=128, data_scenes=2458, code_res=128, n_samples=256, occ_grid_res=64,
        scenes_per_batch=16, rays_per_scene=4096, lr_code=5e-3, warmup=500,
        unet_base=128, unet_mults=(1, 2, 2, 4, 4), unet_res_blocks=2,
        unet_attn_res=(32, 16, 8), unet_groups=32, unet_dropout=0.0, ema_beta=0.997,
        iters=1_000_000,
        k_in_schedule=((0, 16), (2000, 4), (100_000, 2)), ckpt_every=5000),
}
# the official reconstruction configuration: dropout 0.1 in the UNet, 80K iterations
# (longer training overfits; the generation config above has no dropout and runs 1M)
PRESETS["paper-recon"] = replace(PRESETS["paper"], name="paper-recon", unet_dropout=0.1,
                                 iters=80_000)


def get_preset(name: str, **overrides) -> Config:
    """The preset `name` with keyword overrides, e.g. get_preset('smoke', iters=5).
    Overrides are validated (see `validate`): a NaN learning rate is refused here."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    unknown = set(overrides) - set(FIELD_TYPES)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; valid keys: "
                         f"{', '.join(FIELD_TYPES)}")
    return validate(replace(PRESETS[name], **overrides))


# ----------------------------------------------------------------- validation ----
FIELD_TYPES = {f.name: f.type for f in fields(Config)}     # "int", "float", "str", "tuple"
POSITIVE = ("image_res", "data_scenes", "data_views", "code_ch", "code_res", "dec_hidden",
            "n_samples", "occ_grid_res", "scenes_per_batch", "rays_per_scene", "lr_code",
            "lr_decoder", "lr_denoiser", "c_rend", "T", "c_diff", "unet_base", "unet_res_blocks",
            "unet_groups", "x0_ema_momentum", "ddim_steps", "diff_steps", "iters", "ckpt_every")
NON_NEGATIVE = ("views_per_scene", "code_reg", "near_min", "occ_threshold", "occ_warmup",
                "warmup", "stage1_tv", "omega", "unet_dropout", "ema_beta", "ema_rampup",
                "diff_batch", "seed")
AT_MOST = {"image_res": 4096, "code_res": 1024, "occ_grid_res": 1024, "n_samples": 4096,
           "rays_per_scene": 1 << 20, "scenes_per_batch": 1 << 16, "T": 100_000,
           "ddim_steps": 100_000, "unet_dropout": 0.999, "ema_beta": 1.0, "x0_ema_momentum": 1.0}


def validate(cfg: Config) -> Config:
    """Check every field's type and range; raise ValueError naming the field. Returns cfg."""
    for name, kind in FIELD_TYPES.items():
        v = getattr(cfg, name)
        ok = {"int": lambda x: isinstance(x, int) and not isinstance(x, bool),
              "float": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
              "str": lambda x: isinstance(x, str),
              "tuple": lambda x: isinstance(x, (tuple, list))}[kind](v)
        if not ok:
            raise ValueError(f"config {name}={v!r}: expected {kind}")
        if kind in ("int", "float"):
            if not math.isfinite(v):
                raise ValueError(f"config {name}={v!r}: must be a finite number")
            if name in POSITIVE and v <= 0:
                raise ValueError(f"config {name}={v!r}: must be positive")
            if name in NON_NEGATIVE and v < 0:
                raise ValueError(f"config {name}={v!r}: must not be negative")
            if name in AT_MOST and v > AT_MOST[name]:
                raise ValueError(f"config {name}={v!r}: at most {AT_MOST[name]}")
    if cfg.schedule not in ("linear", "cosine"):
        raise ValueError(f"config schedule={cfg.schedule!r}: must be 'linear' or 'cosine'")
    for name in ("unet_mults", "unet_attn_res"):
        if not all(isinstance(x, int) and x > 0 for x in getattr(cfg, name)):
            raise ValueError(f"config {name}={getattr(cfg, name)!r}: positive integers expected")
    sched = cfg.k_in_schedule
    if not sched or not all(len(p) == 2 and all(isinstance(x, int) for x in p) and p[1] > 0
                            for p in sched):
        raise ValueError(f"config k_in_schedule={sched!r}: expected ((from_iter, K_in), ...) "
                         "with K_in > 0")
    return cfg


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' -> (key, typed value), checked against Config's field type:
    int and float fields take numbers, tuple fields JSON lists ('[[0, 4], [10, 2]]')."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE")
    if key not in FIELD_TYPES:
        raise ValueError(f"--set {key}: unknown config key; valid keys: {', '.join(FIELD_TYPES)}")
    return key, coerce(key, raw.strip(), f"--set {key}")


def coerce(key: str, value, where: str):
    """`value` (a string from the command line, or a JSON value) as Config field `key`'s type."""
    kind = FIELD_TYPES[key]
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if isinstance(value, str) and kind in ("int", "float", "tuple"):
            value = json.loads(value) if kind == "tuple" else value
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value, 10)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError
        return tuple(tuple(x) if isinstance(x, (list, tuple)) else x for x in value)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: {value!r} is not a valid {kind} for config field {key}") from None


def load_config_file(path: str) -> dict:
    """The typed overrides of a JSON config file ({"code_res": 16, ...}); unknown keys refused."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read a JSON config ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path}: expected a JSON object of config fields")
    unknown = sorted(set(raw) - set(FIELD_TYPES))
    if unknown:
        raise ValueError(f"--config {path}: unknown config keys {unknown}; valid keys: "
                         f"{', '.join(FIELD_TYPES)}")
    return {k: coerce(k, v, f"--config {path}") for k, v in raw.items()}


def fast_mode() -> bool:
    """True under MINISSD_FAST=1 (CI runs every notebook this way)."""
    return os.environ.get("MINISSD_FAST", "0") not in ("", "0", "false", "False")


def preset_for_notebook(big: str | None = None, **overrides) -> Config:
    """The notebooks' preset: `smoke` under MINISSD_FAST=1; otherwise $MINISSD_PRESET if
    set, else `big` if given, else `gpu` on a CUDA machine and `laptop` elsewhere."""
    if fast_mode():
        name = "smoke"
    else:
        name = (os.environ.get("MINISSD_PRESET") or big
                or ("gpu" if torch.cuda.is_available() else "laptop"))
    return get_preset(name, **overrides)


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; `prefer` ('cpu', 'cuda', ...) overrides."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cache_dir() -> str:
    """Where generated datasets and trained checkpoints are cached (MINISSD_CACHE)."""
    root = os.environ.get("MINISSD_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "minissd")
    os.makedirs(root, exist_ok=True)
    return root
