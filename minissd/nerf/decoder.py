"""The shared NeRF decoder psi of the paper's triplane NeRF: triplane feature + view
direction -> (sigma, c). Official code: lib/models/decoders/triplane_decoder.py
`TriPlaneDecoder` (`point_decode`).

With h = W1 f(p) + b1 (f(p) in R^{3C} the concatenated triplane feature, eq. in triplane.py):

    sigma(p)    = truncexp( w_sigma . SiLU(h) + b_sigma )                     (density)
    c(p, d)     = (1 + 2 s) sigmoid( W_c SiLU( h + W_d Y(d) + b_d ) + b_c ) - s     (colour)

where Y(d) in R^16 are the real spherical harmonics of degree <= 3 ("degree 4", 4 bands)
of the unit view direction (`sh_basis`; the official `SHEncoder(degree=4)` of
lib/ops/shencoder up to the signs of 4 components), W_d starts at zero (so colour starts
view independent), and truncexp is exp in the forward pass with the exponent clamped to
+-15 in the backward pass (a stable gradient for very dense points). The colour's sigmoid is stretched by the
saturation s = 0.001 (official `sigmoid_saturation`) so that pure white and black are
reached at finite logits (the white background needs it), then clamped to [0, 1] by the
renderer's callers. Linear layers start Xavier-uniform with zero bias, W_d at zero, as
the official `TriPlaneDecoder.init_weights` (lib/models/decoders/triplane_decoder.py).
There is no positional encoding: all spatial
detail lives in the triplane. 2564 parameters for C = 6, hidden = 64 (18*64+64 base,
64+1 density, 16*64+64 direction, 64*3+3 colour) -- all decoders of all scenes are this
one small MLP, conditioned only by the code.

Minissd follows the paper here; it is plain PyTorch (no tcnn / fused MLPs).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minissd.runtime import autocast


class _TruncExp(torch.autograd.Function):
    """exp(x) forward; backward uses exp(clamp(x, -15, 15)) so gradients stay finite."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


def sh_basis(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics Y_lm(d), l = 0..3 (16 values), of unit directions (..., 3).

    Component i = l^2 + l + m (m = -l..l), each a real spherical harmonic
    sqrt(2) N_lm P_l^|m|(z) {sin |m| phi (m < 0), cos m phi (m > 0)}, N_l0 P_l(z) for m = 0,
    normalised so that the integral over the sphere of Y_i Y_j = delta_ij.

    Sign convention: the same constants as torch-ngp's shencoder (which the official code
    vendors as lib/ops/shencoder, src/shencoder.cu); bands l = 0, 1, 2 (components 0-8)
    also have its signs, i.e. the Condon-Shortley phase (-1)^m, so odd m are negated.
    Band l = 3 does NOT carry that phase here: components 9, 11, 13, 15 (m = -3, -1, 1, 3)
    are the NEGATIVES of torch-ngp's (sh_basis = torch-ngp * diag(1,..,1,-1,1,-1,1,-1,1,-1)).
    The mix is harmless, every component is still an orthonormal real SH and the flipped
    sign is absorbed by the matching column of the learned `dir_net` weight (zero at
    init), but those four weight columns have the opposite sign of an official decoder's.
    It is kept as is so that trained decoders stay valid; tests/test_decoder.py pins it.
    """
    x, y, z = dirs.unbind(-1)
    x2, y2, z2 = x * x, y * y, z * z
    xy, yz, xz = x * y, y * z, x * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),                     # l = 0
        -0.48860251190291987 * y,                                     # l = 1
        0.48860251190291987 * z,
        -0.48860251190291987 * x,
        1.0925484305920792 * xy,                                      # l = 2
        -1.0925484305920792 * yz,
        0.94617469575755997 * z2 - 0.31539156525251999,
        -1.0925484305920792 * xz,
        0.54627421529603959 * (x2 - y2),
        0.59004358992664352 * y * (3.0 * x2 - y2),                    # l = 3
        2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (5.0 * z2 - 1.0),
        0.3731763325901154 * z * (5.0 * z2 - 3.0),
        0.45704579946446572 * x * (5.0 * z2 - 1.0),
        1.4453057213202769 * z * (x2 - y2),
        0.59004358992664352 * x * (x2 - 3.0 * y2),
    ], dim=-1)


class TriplaneDecoder(nn.Module):
    """psi: (feat (..., 3C), dirs (..., 3)) -> (sigma (...), rgb (..., 3))."""

    def __init__(self, code_ch: int, hidden: int = 64, sh_dim: int = 16,
                 sigmoid_saturation: float = 1e-3, amp: str = "off"):
        super().__init__()
        self.code_ch, self.hidden = code_ch, hidden
        self.amp = amp                 # cfg.amp: the linear layers under autocast (runtime.py)
        self.saturation = sigmoid_saturation
        self.base = nn.Linear(3 * code_ch, hidden)
        self.density_head = nn.Linear(hidden, 1)
        self.dir_net = nn.Linear(sh_dim, hidden)
        self.color_head = nn.Linear(hidden, 3)
        for layer in (self.base, self.density_head, self.color_head):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.dir_net.weight)                # colour starts view independent
        nn.init.zeros_(self.dir_net.bias)

    @classmethod
    def from_config(cls, cfg) -> "TriplaneDecoder":
        return cls(cfg.code_ch, cfg.dec_hidden, amp=getattr(cfg, "amp", "off"))

    def density(self, feat: torch.Tensor) -> torch.Tensor:
        """sigma only (no colour branch): (..., 3C) -> (...)."""
        with autocast(self.amp, feat.device, "decoder"):
            d = self.density_head(F.silu(self.base(feat)))
        return trunc_exp(d.float().squeeze(-1))

    def forward(self, feat: torch.Tensor, dirs: torch.Tensor):
        with autocast(self.amp, feat.device, "decoder"):              # fp32 unless cfg.amp
            h = self.base(feat)                                         # (..., hidden)
            d = self.density_head(F.silu(h))                            # (..., 1)
            g = F.silu(h + self.dir_net(sh_basis(dirs.to(feat.dtype))))  # (..., hidden)
            c = self.color_head(g)                                      # (..., 3)
        sigma = trunc_exp(d.float().squeeze(-1))                        # (...) activations in fp32
        rgb = torch.sigmoid(c.float())                                  # (..., 3)
        if self.saturation:
            rgb = rgb * (1 + 2 * self.saturation) - self.saturation
        return sigma, rgb

