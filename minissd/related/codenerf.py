"""CodeNeRF (Jang & Agapito, ICCV 2021): one MLP NeRF for a whole category, conditioned on a
per-object SHAPE code z_s and TEXTURE code z_t (the paper's eqs. 1-3; official code
wbjang/code-nerf, src/model.py `CodeNeRF`):

    F^s : (gamma_x(p), z_s)        -> (sigma, v)           density branch sees the shape code
    F^t : (v, gamma_d(d), z_t)     -> c                    colour branch also sees the texture code
    F   = F^t o F^s

gamma is the NeRF positional encoding [p, sin(2^k pi p), cos(2^k pi p)]_{k < L}. As in the
official network, each code enters every block of its branch through its own linear
layer (h <- ReLU(W h + b + U z)), sigma = softplus(.), c = sigmoid(.). The codes of all
training objects are learnt as an AUTO-DECODER (no encoder), eq. (4):

    min_{Theta, {z_s^i, z_t^i}}  sum_r ||C(r; z_s^i, z_t^i) - C_gt(r)||^2 + 1/nu^2 (|z_s^i|^2 + |z_t^i|^2)

Everything else is minissd's: the renderer (`nerf.render.render_rays`, which takes any
field callable), the rays (`autodecoder.sample_rays`), the data (`data.srn`), and the
per-object codes with their own Adam state (`LatentBank`, a `triplane.CodeBank` whose
codes are (2, D) vectors instead of triplanes). Training and test-time fitting live in
codenerf_fit.py; unposed fitting in pose.py; code swapping in editing.py.

Departures from the paper (laptop-sized): latent size D = 32 (paper 256), 64 hidden units
(paper 256), L = 6 / 2 frequencies for points / directions (paper 10 / 4), the samples
per ray and image size of the SSDNeRF preset the config copies (48 samples, 64 px).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minissd.config import preset_data
from minissd.nerf.triplane import CodeBank
from minissd.overrides import StoredConfig
from minissd.ssd import checkpoint as ckpt

MODEL_FORMAT = "minissd-codenerf-v1"


@dataclass(frozen=True)
class CodeNeRFConfig(StoredConfig):
    name: str = "laptop"             # the SSDNeRF preset whose data it trains on
    # --- data and renderer: the SSDNeRF preset's (config.preset_data) ----------------
    image_res: int = 64
    views_per_scene: int = 0
    data_scenes: int = 64
    data_views: int = 50
    n_samples: int = 48
    near_min: float = 0.2
    seed: int = 0
    # --- network (official: latent 256, W 256, 10 / 4 frequencies) -----------------
    latent: int = 32                 # D, size of z_s and of z_t
    hidden: int = 64
    shape_blocks: int = 2
    texture_blocks: int = 1
    freqs_xyz: int = 6
    freqs_dir: int = 2
    # --- training (official: Adam, 1e-4, 2048 rays, 1/nu^2 on the code norms) --------
    scenes_per_batch: int = 4
    rays_per_scene: int = 256
    lr_net: float = 1e-3
    lr_code: float = 1e-2
    code_reg: float = 1e-4           # 1/nu^2 on |z_s|^2 + |z_t|^2 per object
    warmup: int = 50
    iters: int = 4000
    ckpt_every: int = 100

    @classmethod
    def from_preset(cls, name: str = "laptop", **overrides) -> "CodeNeRFConfig":
        """The CodeNeRF config training on the data (and rendering with the samples) of
        minissd's SSDNeRF preset `name`: a fair comparison sees the same cars."""
        small = {"smoke": dict(latent=16, hidden=32, iters=150, rays_per_scene=128,
                               ckpt_every=25, warmup=10)}.get(name, {})
        return replace(cls(**preset_data(name), **small), **overrides)


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """gamma(x) = [x, sin(2^k pi x), cos(2^k pi x)]_{k < L}: (..., d) -> (..., d (1 + 2L))."""
    freqs = (2.0 ** torch.arange(n_freqs, device=x.device, dtype=x.dtype)) * math.pi
    ang = x[..., None, :] * freqs[:, None]                               # (..., L, d)
    return torch.cat([x, ang.sin().flatten(-2), ang.cos().flatten(-2)], dim=-1)


class CodeNeRFNet(nn.Module):
    """F = F^t o F^s: (points (B, M, 3), dirs (B, M, 3), codes (B, 2, D)) -> sigma (B, M),
    rgb (B, M, 3). codes[:, 0] is z_s (shape), codes[:, 1] is z_t (texture)."""

    def __init__(self, cfg: CodeNeRFConfig):
        super().__init__()
        W, D = cfg.hidden, cfg.latent
        self.cfg = cfg
        self.enc_x = nn.Linear(3 * (1 + 2 * cfg.freqs_xyz), W)
        self.shape_in = nn.ModuleList(nn.Linear(D, W) for _ in range(cfg.shape_blocks))
        self.shape_blocks = nn.ModuleList(nn.Linear(W, W) for _ in range(cfg.shape_blocks))
        self.sigma = nn.Linear(W, 1)
        self.enc_d = nn.Linear(W + 3 * (1 + 2 * cfg.freqs_dir), W)
        self.tex_in = nn.ModuleList(nn.Linear(D, W) for _ in range(cfg.texture_blocks))
        self.tex_blocks = nn.ModuleList(nn.Linear(W, W) for _ in range(cfg.texture_blocks))
        self.rgb = nn.Linear(W, 3)

    def features(self, xyz: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
        """F^s's hidden feature v (B, M, W) of points xyz (B, M, 3) under shape codes (B, D)."""
        h = self.enc_x(positional_encoding(xyz, self.cfg.freqs_xyz))
        for inp, blk in zip(self.shape_in, self.shape_blocks):
            h = F.relu(blk(h + inp(z_s)[:, None]))
        return h

    def density(self, xyz: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.sigma(self.features(xyz, codes[:, 0]))[..., 0])

    def forward(self, xyz: torch.Tensor, dirs: torch.Tensor, codes: torch.Tensor):
        h = self.features(xyz, codes[:, 0])                              # (B, M, W)
        sigma = F.softplus(self.sigma(h)[..., 0])                        # (B, M)
        y = self.enc_d(torch.cat([h, positional_encoding(dirs, self.cfg.freqs_dir)], -1))
        for inp, blk in zip(self.tex_in, self.tex_blocks):
            y = F.relu(blk(y + inp(codes[:, 1])[:, None]))
        return sigma, torch.sigmoid(self.rgb(y))                         # (B, M), (B, M, 3)


class CodeNeRFField:
    """The radiance fields of B objects with codes (B, 2, D): the renderer's field callable
    (same interface as triplane.TriplaneField)."""

    def __init__(self, net: CodeNeRFNet, codes: torch.Tensor):
        self.net, self.codes = net, codes

    @property
    def batch_size(self) -> int:
        return self.codes.shape[0]

    def __call__(self, xyz: torch.Tensor, dirs: torch.Tensor):
        return self.net(xyz, dirs, self.codes)

    def density(self, xyz: torch.Tensor) -> torch.Tensor:
        return self.net.density(xyz, self.codes)


def make_field(net: CodeNeRFNet, codes: torch.Tensor) -> CodeNeRFField:
    return CodeNeRFField(net, codes)


class LatentBank(CodeBank):
    """One (z_s, z_t) pair per training object, (N, 2, D), each object with its own Adam
    state: CodeBank's per-scene Adam (`get`, `adam_step`, state dicts) on vectors instead
    of triplanes. The codes are used as stored (no tanh activation)."""

    def __init__(self, n_scenes: int, latent: int, device="cpu", init_std: float | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(0, 1, 1, device)
        std = 1.0 / math.sqrt(latent) if init_std is None else init_std
        self.codes_ = (torch.randn((n_scenes, 2, latent), generator=generator) * std).to(self.device)
        self.exp_avg = torch.zeros_like(self.codes_)
        self.exp_avg_sq = torch.zeros_like(self.codes_)
        self.step = torch.zeros(n_scenes, dtype=torch.long, device=self.device)

    def activated(self, idx=None) -> torch.Tensor:
        c = self.codes_ if idx is None else self.codes_[torch.as_tensor(idx, device=self.device)]
        return c.detach()

    @classmethod
    def from_state_dict(cls, sd: dict, device="cpu") -> "LatentBank":
        N, _, D = sd["codes_"].shape
        return cls(N, D, device=device).load_state_dict(sd)


class CodeNeRF:
    """A trained CodeNeRF: network (frozen), the training codes (N, 2, D), config, log.

    model.field(codes) is the renderable field; model.mean_code() (1, 2, D) is where
    test-time fitting starts (official: the mean of the trained embeddings)."""

    kind = "codenerf"

    def __init__(self, cfg: CodeNeRFConfig, net: CodeNeRFNet, codes: torch.Tensor,
                 names=(), log=(), meta=None):
        self.cfg, self.net, self.codes = cfg, net.eval().requires_grad_(False), codes
        self.names, self.log, self.meta = list(names), list(log), dict(meta or {})

    def field(self, codes: torch.Tensor) -> CodeNeRFField:
        return make_field(self.net, codes)

    def mean_code(self) -> torch.Tensor:
        return self.codes.mean(dim=0, keepdim=True)                     # (1, 2, D)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def to(self, device) -> "CodeNeRF":
        self.net.to(device)
        self.codes = self.codes.to(device)
        return self

    def save(self, path: str, half: bool = True) -> str:
        """Write the model file atomically (network and codes in float16 when half)."""
        cast = (lambda t: t.half()) if half else (lambda t: t)
        payload = {"format": MODEL_FORMAT, "config": self.cfg.to_dict(),
                   "net": {k: cast(v.cpu()) for k, v in self.net.state_dict().items()},
                   "codes": cast(self.codes.detach().cpu()), "names": self.names,
                   "log": self.log, "meta": self.meta}
        bad = ckpt.nonfinite({k: payload[k] for k in ("net", "codes")})
        if bad:
            raise ckpt.CheckpointError(f"{path}: not written, non-finite values in {bad[:5]}")
        return ckpt.save_atomic(path, payload)

    @classmethod
    def from_payload(cls, sd: dict, path: str = "", device="cpu") -> "CodeNeRF":
        if sd.get("format") != MODEL_FORMAT:
            raise ckpt.CheckpointError(f"{path}: format {sd.get('format')!r}, expected {MODEL_FORMAT!r}")
        cfg = CodeNeRFConfig.from_dict(sd["config"], f"{path}: config")
        net = CodeNeRFNet(cfg)
        net.load_state_dict({k: v.float() for k, v in sd["net"].items()})
        return cls(cfg, net, sd["codes"].float(), sd["names"], sd["log"], sd["meta"]).to(device)

    @classmethod
    def load(cls, path: str, device="cpu") -> "CodeNeRF":
        return cls.from_payload(ckpt.load(path), path, device)


def load_any(path: str, device="cpu"):
    """A model file of either kind: a CodeNeRF, or an SSDNeRF `ssd.model.Model`."""
    from minissd.ssd.model import Model
    sd = ckpt.load(path)
    if sd.get("format") == MODEL_FORMAT:
        return CodeNeRF.from_payload(sd, path, device)
    return Model.load(path, device=device)
