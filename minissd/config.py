"""Presets: every size and rate of a minissd run in one dataclass.

The paper's numbers (its implementation details and the official configs, e.g.
configs/paper_cfgs/ssdnerf_cars_uncond.py) live in the `paper` preset; `gpu` keeps
the paper's data sizes (128x128 images, R=128 triplanes) with a lighter denoiser;
`laptop` is what a class trains on 2 CPU cores (64x64 images, R=32, 1500 iterations in bf16:
about 45-60 minutes a model on one core);
`smoke` is what the tests and `MINISSD_FAST=1` notebooks run (32x32, R=16: a model trains
in well under a minute, and the shipped ones in assets/models/ load in milliseconds).

    cfg = get_preset("laptop", iters=2000)      # overrides by keyword
    cfg = preset_for_notebook()                 # smoke under MINISSD_FAST=1, else laptop/gpu

A config is plain data: `asdict(cfg)` is stored in every checkpoint, and loading a
checkpoint made with a different config raises a clear error (see checkpoint.py). The
test-time settings (guided sampling and finetuning, eq. 5-7) are a second dataclass,
`TestConfig`. Each field's type is read by overrides.py and its range checked by
config_ranges.py (`validate`), so a bad value is refused naming the field.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
import os

import torch

from minissd.config_ranges import check_test_config, validate
from minissd.nerf.render import NEAR_MIN
from minissd.overrides import field_kinds, load_json_overrides, parse_pair, parse_pairs, typed_dict


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
    near_min: float = NEAR_MIN     # rays start at least this far from the camera (render.py)
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
                                   # official 20 x 3 x per-channel MSE (eq. 1, autodecoder.py);
                                   # the exponent is the paper's per-view form (the official
                                   # code's counts pixels, 0.1 N_v H W / 128^2: equal at 128x128)
    stage1_tv: float = 1.0         # two-stage baseline, stage 1: TV^1.5 code regulariser weight
                                   # (official stage-1 configs), instead of code_reg
    # --- diffusion prior phi (paper eq. 2; official lib/models/diffusions/gaussian_diffusion.py)
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
    def from_dict(cls, d: dict, where: str = "config") -> "Config":
        """A Config from its `to_dict()` (JSON lists back to tuples); unknown keys and
        wrong types refused naming `where` (e.g. the model file). Not range-checked:
        call validate()."""
        return cls(**typed_dict(d, FIELD_TYPES, where))

    def validate(self, where: str = "config") -> "Config":
        """Raise ValueError naming the first field with an impossible value; returns self."""
        return validate(self, where)


@dataclass(frozen=True)
class TestConfig:
    """Every test-time setting in one place: guided sampling (eq. 5, 6) and finetuning
    (eq. 7). Each model file stores one (`Model.test`); the command line overrides single
    fields (`--test-set lambda_gd=20`). It is NOT part of the training Config, so
    calibrating test time never changes a model's key. The defaults were chosen by the
    sweep in benchmarks/calibrate_testtime.py on a validation split (docs/testtime_calibration.md).
    """
    __test__ = False               # not a pytest test class
    # --- image-guided sampling, eq. (5, 6) (guidance.py) ---------------------------------
    lambda_gd: float = 60.0        # guidance scale on the gradient of the per-pixel SUM of
                                   # 0.5 ||y - y_hat||^2 over the observed views (eq. 1's weight);
                                   # validation sweep 7.5/15/30/60/120 -> 60 (docs/)
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
    def from_dict(cls, d: dict | None, where: str = "test-time config") -> "TestConfig":
        """A TestConfig from its `to_dict()` (None: the defaults); typed, not range-checked."""
        return cls(**typed_dict(dict(d or {}), TEST_FIELD_TYPES, where))

    def with_overrides(self, pairs, flag: str = "--test-set") -> "TestConfig":
        """A validated copy with KEY=VALUE strings applied (`--test-set lambda_gd=30`)."""
        return replace(self, **parse_pairs(pairs, TEST_FIELD_TYPES, flag)).validate(where=flag)

    def validate(self, cfg: "Config | None" = None, where: str = "test-time") -> "TestConfig":
        """Raise ValueError naming the first setting with an impossible value (NaN, a
        negative scale, zero inner steps, a malformed schedule; with `cfg`, more DDIM
        steps than the model's T); returns self."""
        return check_test_config(self, cfg, where)


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
    # codes) so the prior gets 84K code samples (8 + 3 x 16 per iteration) in 1500 iterations
    # instead of 12K (train.py)
    # lr_denoiser=1e-3, 10x the paper's 1e-4 (also in smoke): the paper's rate is for a 122M-
    # parameter UNet over 1M iterations; the laptop UNet has 1.2M and 1500 outer iterations, and
    # at 1e-4 it would barely move in that budget. Set when the laptop preset was introduced
    # (commit 0e5da93) without a recorded sweep; the shipped laptop models are trained with it.
    # iters=1500 and amp="auto" (bf16 autocast where the CPU/GPU runs it fast, fp32 elsewhere):
    # the time bf16 saves per iteration is spent on 1.5x the iterations (issue 19, docs/speed.md)
    "laptop": Config(name="laptop", rays_per_scene=512, n_samples=48, lr_denoiser=1e-3,
                     warmup=50, iters=1500, k_in_schedule=((0, 4), (100, 2)), ckpt_every=250,
                     diff_steps=4, diff_batch=16, amp="auto"),
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


FIELD_TYPES = field_kinds(Config)                  # "int", "float", "str", "tuple"
TEST_FIELD_TYPES = field_kinds(TestConfig)
# what a baseline's config (CodeNeRF, DiffRF) copies from the SSDNeRF preset of its name: the
# same training data and samples per ray, so that a comparison sees the same cars
DATA_FIELDS = ("image_res", "views_per_scene", "data_scenes", "data_views", "n_samples",
               "near_min", "seed")


def preset_data(name: str) -> dict:
    """name and the DATA_FIELDS of SSDNeRF preset `name`, as a baseline config's keywords."""
    c = get_preset(name)
    return dict(name=name, **{k: getattr(c, k) for k in DATA_FIELDS})


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' -> (key, typed value), checked against Config's field type:
    int and float fields take numbers, tuple fields JSON lists ('[[0, 4], [10, 2]]')."""
    return parse_pair(text, FIELD_TYPES, "--set")


def load_config_file(path: str) -> dict:
    """The typed overrides of a JSON config file ({"code_res": 16, ...}); unknown keys refused."""
    return load_json_overrides(path, FIELD_TYPES, "--config")


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


def available_devices() -> list[str]:
    """The devices this machine has: 'cpu', then 'cuda:0'... and 'mps' when present."""
    mps = getattr(torch.backends, "mps", None)
    return (["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            + (["mps"] if mps is not None and mps.is_available() else []))


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; `prefer` ('cpu', 'cuda', 'cuda:1', ...) overrides,
    and a device this machine does not have is refused (ValueError naming --device and
    the devices there are)."""
    if prefer:
        have = available_devices()
        try:
            dev = torch.device(prefer)
        except RuntimeError:
            dev = None
        name = None if dev is None else (f"cuda:{dev.index or 0}" if dev.type == "cuda" else dev.type)
        if name not in have:
            raise ValueError(f"--device {prefer}: not available here; this machine has "
                             f"{', '.join(have)}")
        return dev
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
