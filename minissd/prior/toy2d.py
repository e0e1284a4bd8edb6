"""A 2D playground for the v-diffusion prior: the same `DiffusionPrior` (eq. 2) and
`ddim_sample`, with a tiny MLP in place of the triplane UNet.

    data   = ring of Gaussians in the plane,   x0 (N, 2)
    prior  = DiffusionPrior(cfg, net=MLPDenoiser())       # v_hat = MLP(x_t, emb(t))
    loss   = prior.loss(x0).mean()                         # 0.5 w(t) |x0_hat - x0|^2
    sample = ddim_sample(prior.denoise, randn(N, 2), prior.schedule, steps)
    score  = mmd(sample, held_out_data)                    # kernel two-sample distance

MMD^2(P, Q) = E k(x,x') + E k(y,y') - 2 E k(x,y) with a sum of RBF kernels (Gretton et
al. 2012); the biased (V-statistic) estimate, so even two samples of the same
distribution give a small positive floor.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from minissd.config import get_preset
from minissd.prior.diffusion import DiffusionPrior
from minissd.prior.sampling import ddim_sample
from minissd.prior.unet import timestep_embedding


def mixture_of_gaussians(n: int, n_modes: int = 6, radius: float = 1.0, std: float = 0.1,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """n points (n, 2) from n_modes equal-weight Gaussians on a circle of `radius`."""
    k = torch.randint(0, n_modes, (n,), generator=generator)
    ang = 2 * math.pi * k.float() / n_modes
    centres = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)   # (n, 2)
    return centres + std * torch.randn(n, 2, generator=generator)


class MLPDenoiser(nn.Module):
    """v_hat = MLP([x_t, emb(t)]): x_t (B, D), t (B,) -> (B, D)."""

    def __init__(self, dim: int = 2, hidden: int = 128, emb: int = 32, depth: int = 3):
        super().__init__()
        self.emb = emb
        layers, width = [], dim + emb
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, dim)

    def forward(self, x, t):
        e = timestep_embedding(t, self.emb, max_period=2000.0)                # (B, emb)
        return self.head(self.body(torch.cat([x, e], dim=-1)))               # (B, D)


def train_toy(prior, data: torch.Tensor, iters: int = 1500, batch: int = 512,
              lr: float = 5e-3, generator: torch.Generator | None = None) -> list:
    """Adam (cosine-decayed lr) on prior.loss over random minibatches of `data` (N, D);
    returns the per-iteration losses. The decay matters: the constant-lr model stays
    noisy at the mid noise levels where the modes separate."""
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1))
    losses = []
    prior.train()
    for _ in range(iters):
        idx = torch.randint(0, data.shape[0], (batch,), generator=generator)
        loss = prior.loss(data[idx], generator=generator).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    prior.eval()
    return losses


def mmd(x: torch.Tensor, y: torch.Tensor, scales=(0.05, 0.1, 0.2, 0.5, 1.0)) -> float:
    """Biased MMD^2 between samples x (N, D) and y (M, D), sum of RBF kernels."""
    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in scales)
    x, y = x.double(), y.double()
    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def toy_config(**overrides):
    """The smoke preset re-purposed for 2D: only T / schedule / omega matter."""
    return get_preset("smoke", **overrides)


def _demo(seed: int = 0) -> None:                       # python -m minissd.prior.toy2d
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data, held = mixture_of_gaussians(4000, generator=g), mixture_of_gaussians(1000, generator=g)
    prior = DiffusionPrior(toy_config(), net=MLPDenoiser())
    noise = torch.randn(1000, 2, generator=g)
    print("MMD noise vs data:", mmd(noise, held))
    losses = train_toy(prior, data, generator=g)
    x = ddim_sample(prior.denoise, noise, prior.schedule, steps=50)
    print(f"loss {losses[0]:.4f} -> {sum(losses[-100:]) / 100:.4f};",
          "MMD samples vs data:", mmd(x, held), " floor:", mmd(data[:1000], held))


if __name__ == "__main__":
    _demo()
