"""The ranges of every setting: a Config or TestConfig (config.py) is checked field by
field, each of its declared type, finite and within its range, and a bad one is refused
with one line naming the field and where it came from (a flag, a JSON file, a model file;
the errors.py pattern). The types are read once by overrides.py; the ranges are here.

    validate(cfg, "--set")                    # Config.validate
    check_test_config(tcfg, cfg, "--test-set")   # TestConfig.validate

Besides the per-field ranges, the fields that must agree are checked: the UNet's
multipliers and attention resolutions are positive integers, the K_in schedule of
Algorithm 1 is a list of (from_iter >= 0, K_in > 0), the finetuning schedule of eq. (7) a
list of (from_n_views >= 1, outer >= 0, lr >= 0), and no DDIM sampler takes more steps than
the T of the diffusion process (eq. 2).
"""
from __future__ import annotations

import math

from minissd.overrides import field_kinds

# Config: (positive, non-negative, at most, below)
POSITIVE = ("image_res", "data_scenes", "data_views", "code_ch", "code_res", "dec_hidden",
            "n_samples", "occ_grid_res", "scenes_per_batch", "rays_per_scene", "lr_code",
            "lr_decoder", "lr_denoiser", "c_rend", "T", "c_diff", "unet_base", "unet_res_blocks",
            "unet_groups", "x0_ema_momentum", "ddim_steps", "diff_steps", "iters", "ckpt_every")
NON_NEGATIVE = ("views_per_scene", "code_reg", "near_min", "occ_threshold", "occ_warmup",
                "warmup", "stage1_tv", "omega", "unet_dropout", "ema_beta", "ema_rampup",
                "diff_batch", "seed")
AT_MOST = {"image_res": 4096, "code_res": 1024, "occ_grid_res": 1024, "n_samples": 4096,
           "rays_per_scene": 1 << 20, "scenes_per_batch": 1 << 16, "T": 100_000,
           "ddim_steps": 100_000, "unet_dropout": 0.999, "x0_ema_momentum": 1.0,
           "seed": 2**63 - 1}
BELOW = {"ema_beta": 1.0}          # beta = 1 never moves the EMA (and has no half-life)
# TestConfig: (positive, non-negative, at most)
TEST_RANGES = (("ft_inner", "ft_lr_decay"),
               ("lambda_gd", "recon_steps", "guide_rays", "ft_c_rend", "ft_c_diff", "ft_lr_scale",
                "ft_rays"),
               {"ft_lr_decay": 1.0, "recon_steps": 100_000, "guide_rays": 1 << 20,
                "ft_rays": 1 << 20, "ft_inner": 10_000})


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_ranges(obj, kinds: dict, ranges: tuple, where: str) -> None:
    """Every field of dataclass `obj` of its declared kind, finite, and within
    ranges = (positive, non_negative, at_most[, below]); ValueError naming it otherwise."""
    positive, non_negative, at_most = ranges[:3]
    below = ranges[3] if len(ranges) > 3 else {}
    for name, kind in kinds.items():
        v = getattr(obj, name)
        ok = {"int": _is_int, "float": _is_num, "bool": lambda x: isinstance(x, bool),
              "str": lambda x: isinstance(x, str),
              "tuple": lambda x: isinstance(x, (tuple, list))}[kind](v)
        if not ok:
            raise ValueError(f"{where} {name}={v!r}: expected {kind}")
        if kind in ("int", "float"):
            if not math.isfinite(v):
                raise ValueError(f"{where} {name}={v!r}: must be a finite number")
            if name in positive and v <= 0:
                raise ValueError(f"{where} {name}={v!r}: must be positive")
            if name in non_negative and v < 0:
                raise ValueError(f"{where} {name}={v!r}: must not be negative")
            if name in at_most and v > at_most[name]:
                raise ValueError(f"{where} {name}={v!r}: at most {at_most[name]}")
            if name in below and v >= below[name]:
                raise ValueError(f"{where} {name}={v!r}: must be below {below[name]}")


def validate(cfg, where: str = "config"):
    """Check every field of a Config: type and range, then the fields that must agree;
    raise ValueError naming the field. Returns cfg."""
    check_ranges(cfg, field_kinds(type(cfg)), (POSITIVE, NON_NEGATIVE, AT_MOST, BELOW), where)
    if cfg.schedule not in ("linear", "cosine"):
        raise ValueError(f"{where} schedule={cfg.schedule!r}: must be 'linear' or 'cosine'")
    for name in ("unet_mults", "unet_attn_res"):
        if not all(_is_int(x) and x > 0 for x in getattr(cfg, name)):
            raise ValueError(f"{where} {name}={getattr(cfg, name)!r}: positive integers expected")
    sched = cfg.k_in_schedule
    if not sched or not all(isinstance(p, (tuple, list)) and len(p) == 2 and _is_int(p[0])
                            and _is_int(p[1]) and p[0] >= 0 and p[1] > 0 for p in sched):
        raise ValueError(f"{where} k_in_schedule={sched!r}: expected ((from_iter >= 0, K_in > 0), "
                         "...), e.g. [[0, 4], [100, 2]]")
    if cfg.ddim_steps > cfg.T:
        raise ValueError(f"{where} ddim_steps={cfg.ddim_steps}: more DDIM steps than T={cfg.T} "
                         "diffusion steps")
    return cfg


def check_test_config(tcfg, cfg=None, where: str = "test-time"):
    """Check every field of a TestConfig (its ranges and the finetuning schedule; with the
    training Config `cfg`, no more DDIM steps than its T); ValueError naming the field.
    Returns tcfg."""
    check_ranges(tcfg, field_kinds(type(tcfg)), TEST_RANGES, where)
    sched = tcfg.ft_schedule
    if not sched or not all(
            isinstance(e, (tuple, list)) and len(e) == 3 and _is_int(e[0]) and e[0] >= 1
            and _is_int(e[1]) and e[1] >= 0 and _is_num(e[2]) and math.isfinite(e[2])
            and e[2] >= 0 for e in sched):
        raise ValueError(f"{where} ft_schedule={sched!r}: expected ((from_n_views >= 1, "
                         "outer_iterations >= 0, lr >= 0), ...), at least one entry")
    if cfg is not None and tcfg.recon_steps > cfg.T:
        raise ValueError(f"{where} recon_steps={tcfg.recon_steps}: more DDIM steps than the "
                         f"model's T={cfg.T}")
    return tcfg
