"""DiffRF's denoiser: a small time-conditioned 3D UNet on voxel grids (DiffRF Sec. 3.2:
"f_t is passed through a time-conditioned 3D-UNet, giving an estimate of the applied
noise eps").

    eps_hat = eps_theta(f_t, t),      f_t (B, 4, G, G, G),  t (B,) integer timesteps.

The 2-D triplane UNet (prior/unet.py) with Conv3d instead of Conv2d and no attention
(a 16^3 grid has 4096 positions; the receptive field of three levels covers it):
  * the same sinusoidal embedding of t -> MLP -> e (B, 4 base) (unet.timestep_embedding);
  * residual blocks GroupNorm -> SiLU -> conv, the second conv modulated by
        h = GroupNorm(h) * (1 + scale(e)) + shift(e);
  * widths base * mults[i], one block per level going down, two going up (each eats one
    skip connection), stride-2 conv down / trilinear-free nearest + conv up;
  * the output conv starts at zero, so eps_hat = 0 at initialisation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minissd.prior.unet import check_sizes, timestep_embedding, zero_init


class ResBlock3d(nn.Module):
    """x + F(x, e): two 3x3x3 convs, the second modulated by scale/shift from e."""

    def __init__(self, cin, cout, emb_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = zero_init(nn.Conv3d(cout, cout, 3, padding=1))
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):                      # x (B, cin, G, G, G), e (B, emb_dim)
        h = self.conv1(F.silu(self.norm1(x)))                                # (B, cout, G, G, G)
        scale, shift = self.emb(F.silu(e))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class UNet3D(nn.Module):
    """eps_theta(f_t, t) for grids (B, in_ch, G, G, G), G divisible by 2^(len(mults)-1)."""

    def __init__(self, in_ch: int = 4, base: int = 16, mults=(1, 2, 4), groups: int = 8, res: int = 16):
        super().__init__()
        n_down = check_sizes("unet3d.py: grid_res", res, base, mults, groups)
        self.in_ch, self.base = in_ch, base
        emb = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.conv_in = nn.Conv3d(in_ch, base, 3, padding=1)
        self.down, self.pool, skips, ch = nn.ModuleList(), nn.ModuleList(), [], base
        for i, m in enumerate(mults):
            self.down.append(ResBlock3d(ch, base * m, emb, groups))
            ch = base * m
            skips.append(ch)
            self.pool.append(nn.Conv3d(ch, ch, 3, stride=2, padding=1) if i < n_down else nn.Identity())
        self.mid = ResBlock3d(ch, ch, emb, groups)
        self.up, self.unpool = nn.ModuleList(), nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            self.up.append(ResBlock3d(ch + skips.pop(), base * m, emb, groups))
            ch = base * m
            self.unpool.append(nn.Conv3d(ch, base * mults[i - 1], 3, padding=1) if i > 0 else nn.Identity())
            ch = base * mults[i - 1] if i > 0 else ch
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(),
                                 zero_init(nn.Conv3d(ch, in_ch, 3, padding=1)))

    @classmethod
    def from_config(cls, cfg) -> "UNet3D":
        return cls(in_ch=4, base=cfg.unet_base, mults=tuple(cfg.unet_mults),
                   groups=cfg.unet_groups, res=cfg.grid_res)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, 4, G, G, G), t (B,) -> eps_hat (B, 4, G, G, G)."""
        if x.dim() != 5 or x.shape[1] != self.in_ch:
            raise ValueError(f"unet3d.py: expected x of shape (B, {self.in_ch}, G, G, G), "
                             f"got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        e = self.time_mlp(timestep_embedding(t, self.base))                  # (B, 4 base)
        h = self.conv_in(x)                                                   # (B, base, G, G, G)
        hs = []
        for block, pool in zip(self.down, self.pool):
            h = block(h, e)
            hs.append(h)
            h = pool(h)                                                       # halves G (not last)
        h = self.mid(h, e)
        for block, unpool in zip(self.up, self.unpool):
            h = block(torch.cat([h, hs.pop()], dim=1), e)
            if not isinstance(unpool, nn.Identity):
                h = unpool(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)                                                    # (B, 4, G, G, G)
