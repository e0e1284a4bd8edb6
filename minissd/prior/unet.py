"""The denoiser phi: a 2D UNet on triplanes stacked as images (official code:
lib/models/architecture/ddpm/denoising.py `DenoisingUnetMod`).

    v_hat = phi(x_t, t),     x_t (B, 3C, R, R),  t (B,) integer timesteps.

ADM-style (Dhariwal & Nichol 2021), as in the official SSDNeRF denoiser:
  * sinusoidal embedding of t -> MLP -> e (B, 4*base);
  * residual blocks GroupNorm -> SiLU -> conv, with scale-shift conditioning
        h = GroupNorm(h) * (1 + scale(e)) + shift(e);
  * self-attention at the feature resolutions in `cfg.unet_attn_res` and in the middle;
  * widths base * mults[i], `res_blocks` blocks per level going down, res_blocks + 1
    going up (each eats one skip connection), stride-2 conv down / nearest+conv up;
  * output conv initialised to zero, so phi starts as v_hat = 0 (x0_hat = alpha x_t).
Paper: base 128, mults [1,2,2,4,4], 2 blocks, attention at 32/16/8 on 128^2: ~122M params.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0):
    """t (B,) -> (B, dim): [cos(t f_k), sin(t f_k)], f_k = max_period^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) *
                      torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                                  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))                                          # (B, dim)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def check_sizes(what: str, res: int, base: int, mults, groups: int) -> int:
    """ValueError unless res halves len(mults) - 1 times and every width base * m splits
    into `groups` GroupNorm groups; returns the number of downsamplings."""
    n_down = len(mults) - 1
    if res % (2 ** n_down):
        raise ValueError(f"{what}={res} must be divisible by 2^{n_down} for unet_mults={tuple(mults)}")
    for m in set(mults):
        if (base * m) % groups:
            raise ValueError(f"{what}: width {base * m} not divisible by unet_groups={groups}")
    return n_down


class ResBlock(nn.Module):
    """x + F(x, e): two 3x3 convs, the second modulated by scale/shift from e."""

    def __init__(self, cin, cout, emb_dim, groups, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):                       # x (B, cin, H, W), e (B, emb_dim)
        h = self.conv1(F.silu(self.norm1(x)))                                 # (B, cout, H, W)
        scale, shift = self.emb(F.silu(e))[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h                                               # (B, cout, H, W)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions (64 channels per head)."""

    def __init__(self, ch, groups, head_ch=64):
        super().__init__()
        self.heads = max(1, ch // head_ch)
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_init(nn.Conv2d(ch, ch, 1))

    def forward(self, x, e=None):                  # x (B, ch, H, W)
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                  # each (B, heads, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)                # (B, heads, HW, d)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Block(nn.Module):
    """One UNet stage step: ResBlock, then Attention if this resolution has one."""

    def __init__(self, cin, cout, emb_dim, groups, attn, dropout):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, groups, dropout)
        self.attn = Attention(cout, groups) if attn else None

    def forward(self, x, e):
        x = self.res(x, e)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, e=None):                  # (B, ch, H, W) -> (B, ch, H/2, W/2)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, e=None):                  # (B, ch, H, W) -> (B, ch, 2H, 2W)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, in_ch=18, base=128, mults=(1, 2, 2, 4, 4), res_blocks=2,
                 attn_res=(32, 16, 8), groups=32, res=128, dropout=0.0):
        super().__init__()
        n_down = check_sizes("unet.py: code_res", res, base, mults, groups)
        self.in_ch, self.res = in_ch, res
        emb = 4 * base
        self.base = base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv2d(in_ch, base, 3, padding=1)

        # encoder: remember every output's width for the skip connections
        self.down, skips, ch, r = nn.ModuleList(), [base], base, res
        for i, m in enumerate(mults):
            for _ in range(res_blocks):
                self.down.append(Block(ch, base * m, emb, groups, r in attn_res, dropout))
                ch = base * m
                skips.append(ch)
            if i < n_down:
                self.down.append(Downsample(ch))
                skips.append(ch)
                r //= 2

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, groups, dropout),
                                  Attention(ch, groups),
                                  ResBlock(ch, ch, emb, groups, dropout)])

        # decoder: res_blocks + 1 blocks per level, each concatenating one skip
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(res_blocks + 1):
                self.up.append(Block(ch + skips.pop(), base * m, emb, groups,
                                     r in attn_res, dropout))
                ch = base * m
            if i > 0:
                self.up.append(Upsample(ch))
                r *= 2

        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(ch, in_ch, 3, padding=1)))

    @classmethod
    def from_config(cls, cfg) -> "UNet":
        return cls(in_ch=3 * cfg.code_ch, base=cfg.unet_base, mults=tuple(cfg.unet_mults),
                   res_blocks=cfg.unet_res_blocks, attn_res=tuple(cfg.unet_attn_res),
                   groups=cfg.unet_groups, res=cfg.code_res,
                   dropout=getattr(cfg, "unet_dropout", 0.0))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, 3C, R, R), t (B,) -> v_hat (B, 3C, R, R)."""
        if x.dim() != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"unet.py: expected x of shape (B, {self.in_ch}, R, R), "
                             f"got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        e = self.time_mlp(timestep_embedding(t, self.base))                   # (B, 4 base)
        h = self.conv_in(x)                                                    # (B, base, R, R)
        hs = [h]
        for layer in self.down:
            h = layer(h, e)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, e)), e)                     # (B, ch, R/2^n, ...)
        for layer in self.up:
            if isinstance(layer, Block):
                h = torch.cat([h, hs.pop()], dim=1)                            # (B, ch + skip, ...)
            h = layer(h, e)
        return self.out(h)                                                     # (B, 3C, R, R)


def count_params(cfg) -> int:
    """Parameter count of UNet.from_config(cfg), built on the meta device (instant)."""
    with torch.device("meta"):
        net = UNet.from_config(cfg)
    return sum(p.numel() for p in net.parameters())
