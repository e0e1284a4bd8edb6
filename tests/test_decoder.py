"""Decoder psi: SH basis, truncated exp, shapes and parameter count."""
import math

import numpy as np
import torch

from minissd.nerf.decoder import TriplaneDecoder, sh_basis, trunc_exp


def fibonacci_sphere(n):
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = (1 - z * z).sqrt()
    return torch.stack([r * phi.cos(), r * phi.sin(), z], -1)


def test_sh_basis_is_orthonormal_on_the_sphere():
    d = fibonacci_sphere(20000)
    Y = sh_basis(d)                                 # (n, 16)
    gram = 4 * math.pi * Y.T @ Y / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


def test_sh_known_values():
    Y = sh_basis(torch.tensor([[0.0, 0.0, 1.0]]))[0]
    assert abs(Y[0] - 0.5 / math.sqrt(math.pi)) < 1e-6            # Y_00
    assert abs(Y[2] - math.sqrt(3 / (4 * math.pi))) < 1e-6        # Y_10 at the pole
    assert abs(Y[6] - math.sqrt(5 / (4 * math.pi))) < 1e-6        # Y_20 at the pole
    assert Y[[1, 3, 4, 5, 7, 8]].abs().max() < 1e-7


def real_sh_closed_form(l, m, d):
    """Orthonormal real SH WITHOUT the Condon-Shortley phase, from spherical coordinates:
    sqrt(2) N P_l^|m|(cos theta) {sin |m| phi, cos m phi}, N = sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!),
    P_l^m(z) = (1 - z^2)^(m/2) d^m/dz^m P_l(z) (numpy's Legendre polynomials)."""
    x, y, z = d
    phi, am = math.atan2(y, x), abs(m)
    plm = (1 - z * z) ** (am / 2) * np.polynomial.legendre.Legendre.basis(l).deriv(am)(z)
    n = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
    if m == 0:
        return n * plm
    return math.sqrt(2) * n * plm * (math.sin(am * phi) if m < 0 else math.cos(m * phi))


# torch-ngp's shencoder (vendored by the official code) = Condon-Shortley phase (-1)^m on
# every band; minissd's sh_basis has it on l <= 2 only: components 9, 11, 13, 15 differ.
TORCH_NGP_SIGN = [(-1) ** abs(m) for l in range(4) for m in range(-l, l + 1)]
MINISSD_SIGN = [s if i < 9 else 1 for i, s in enumerate(TORCH_NGP_SIGN)]


def _dirs():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(6, 3, generator=g, dtype=torch.float64)
    d = torch.cat([d, torch.tensor([[0.0, 0, 1], [1.0, 0, 0], [0.0, -1, 0], [1.0, 2, -2]],
                                   dtype=torch.float64)])
    return d / d.norm(dim=-1, keepdim=True)


def test_sh_basis_all_16_components_pinned_to_closed_form():
    d = _dirs()
    want = torch.tensor([[MINISSD_SIGN[l * l + l + m] * real_sh_closed_form(l, m, di.tolist())
                          for l in range(4) for m in range(-l, l + 1)] for di in d],
                        dtype=torch.float64)
    torch.testing.assert_close(sh_basis(d), want, atol=1e-12, rtol=0)
    # the official (torch-ngp) basis, written from its closed forms, is the same up to the
    # four flipped l = 3 components
    x, y, z = d.unbind(-1)
    ngp_l3 = torch.stack([0.59004358992664352 * y * (-3 * x * x + y * y),
                          0.45704579946446572 * y * (1 - 5 * z * z),
                          0.45704579946446572 * x * (1 - 5 * z * z),
                          0.59004358992664352 * x * (-x * x + 3 * y * y)], -1)
    torch.testing.assert_close(sh_basis(d)[:, [9, 11, 13, 15]], -ngp_l3, atol=1e-12, rtol=0)
    assert [i for i in range(16) if MINISSD_SIGN[i] != TORCH_NGP_SIGN[i]] == [9, 11, 13, 15]


def test_sh_basis_float32_and_batch_shape():
    d = _dirs().float().reshape(2, 5, 3)
    Y = sh_basis(d)
    assert Y.shape == (2, 5, 16) and Y.dtype == torch.float32
    torch.testing.assert_close(Y.double(), sh_basis(d.double()), atol=1e-6, rtol=0)


def test_trunc_exp_forward_and_clamped_gradient():
    x = torch.tensor([-3.0, 0.0, 10.0, 40.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    want = torch.exp(torch.tensor([-3.0, 0.0, 10.0, 15.0]))
    torch.testing.assert_close(x.grad, want)


def test_decoder_shapes_params_and_zero_init_dir():
    dec = TriplaneDecoder(6, 64)
    n = sum(p.numel() for p in dec.parameters() if p.requires_grad)
    # 18*64+64 (base) + 64+1 (density) + 16*64+64 (directions) + 64*3+3 (colour): the
    # paper's "~2.6K parameter" decoder, exactly
    assert n == (18 * 64 + 64) + (64 + 1) + (16 * 64 + 64) + (64 * 3 + 3) == 2564
    feat = torch.randn(2, 7, 18)
    d = torch.nn.functional.normalize(torch.randn(2, 7, 3), dim=-1)
    sigma, rgb = dec(feat, d)
    assert sigma.shape == (2, 7) and rgb.shape == (2, 7, 3)
    assert (sigma > 0).all() and ((rgb > 0) & (rgb < 1)).all()
    # dir_net starts at zero: colour does not depend on the view direction yet
    _, rgb2 = dec(feat, -d)
    torch.testing.assert_close(rgb, rgb2)
    torch.testing.assert_close(dec.density(feat), sigma)
