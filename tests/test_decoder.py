"""Decoder psi: SH basis, truncated exp, shapes and parameter count."""
import math

import torch

from minissd.decoder import TriplaneDecoder, sh_basis, trunc_exp


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


def test_trunc_exp_forward_and_clamped_gradient():
    x = torch.tensor([-3.0, 0.0, 10.0, 40.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    want = torch.exp(torch.tensor([-3.0, 0.0, 10.0, 15.0]))
    torch.testing.assert_close(x.grad, want)


def test_decoder_shapes_params_and_zero_init_dir():
    dec = TriplaneDecoder(6, 64)
    n = sum(p.numel() for p in dec.parameters())
    assert 2500 < n < 2700, n                       # ~2.6K parameters (REFERENCE 2)
    feat = torch.randn(2, 7, 18)
    d = torch.nn.functional.normalize(torch.randn(2, 7, 3), dim=-1)
    sigma, rgb = dec(feat, d)
    assert sigma.shape == (2, 7) and rgb.shape == (2, 7, 3)
    assert (sigma > 0).all() and ((rgb > 0) & (rgb < 1)).all()
    # dir_net starts at zero: colour does not depend on the view direction yet
    _, rgb2 = dec(feat, -d)
    torch.testing.assert_close(rgb, rgb2)
    torch.testing.assert_close(dec.density(feat), sigma)
