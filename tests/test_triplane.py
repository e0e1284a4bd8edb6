"""Triplane sampling, plane <-> image layout, and the per-scene Adam of CodeBank."""
import torch

from minissd.nerf.triplane import (
    CodeBank,
    code_activation,
    image_to_planes,
    make_field,
    planes_to_image,
    sample_triplane,
)


def manual_bilinear(plane, a, b):
    """plane (C, R, R) indexed [c, row, col]; a along width, b along height, in [-1, 1]."""
    C, R, _ = plane.shape
    fx = ((a + 1) * R - 1) / 2          # align_corners=False pixel coordinates
    fy = ((b + 1) * R - 1) / 2
    fx, fy = min(max(fx, 0.0), R - 1.0), min(max(fy, 0.0), R - 1.0)   # border padding
    x0, y0 = int(fx), int(fy)
    x1, y1 = min(x0 + 1, R - 1), min(y0 + 1, R - 1)
    wx, wy = fx - x0, fy - y0
    return ((1 - wx) * (1 - wy) * plane[:, y0, x0] + wx * (1 - wy) * plane[:, y0, x1]
            + (1 - wx) * wy * plane[:, y1, x0] + wx * wy * plane[:, y1, x1])


def test_sample_triplane_matches_manual_bilinear():
    g = torch.Generator().manual_seed(0)
    B, C, R = 2, 3, 5
    planes = torch.randn(B, 3, C, R, R, generator=g)
    xyz = torch.tensor([[[0.1, -0.3, 0.7], [-0.95, 0.2, 0.0], [1.0, 1.0, -1.0], [0.33, 0.44, 0.55]],
                        [[0.0, 0.0, 0.0], [0.5, -0.5, 0.25], [-1.2, 0.3, 2.0], [0.9, -0.9, 0.1]]])
    feat = sample_triplane(planes, xyz)
    assert feat.shape == (B, 4, 3 * C)
    for b in range(B):
        for m in range(4):
            x, y, z = xyz[b, m].tolist()
            want = torch.cat([manual_bilinear(planes[b, 0], x, y),
                              manual_bilinear(planes[b, 1], x, z),
                              manual_bilinear(planes[b, 2], y, z)])
            torch.testing.assert_close(feat[b, m], want, atol=1e-5, rtol=1e-5)


def test_sample_triplane_at_pixel_centre_returns_texel():
    R = 4
    planes = torch.zeros(1, 3, 1, R, R)
    planes[0, 0, 0, 2, 1] = 7.0                     # xy plane: row 2 (y), col 1 (x)
    centre = lambda i: (i + 0.5) / R * 2 - 1
    feat = sample_triplane(planes, torch.tensor([[[centre(1), centre(2), 0.0]]]))
    assert feat[0, 0, 0].item() == 7.0 and feat[0, 0, 1:].abs().sum() == 0


def test_planes_image_roundtrip_and_activation():
    x = torch.randn(2, 3, 6, 8, 8)
    img = planes_to_image(x)
    assert img.shape == (2, 18, 8, 8)
    assert torch.equal(img[:, 6:12], x[:, 1])       # plane-major
    assert torch.equal(image_to_planes(img, 6), x)
    a = code_activation(torch.tensor([-100.0, 0.0, 100.0]))
    torch.testing.assert_close(a, torch.tensor([-2.0, 0.0, 2.0]))


def test_codebank_adam_touches_only_batch_and_matches_torch_adam():
    bank = CodeBank(5, C=2, R=4, init_scale=1e-4, generator=torch.Generator().manual_seed(0))
    before = bank.codes_.clone()
    ref = torch.nn.Parameter(before[[1, 3]].clone())
    opt = torch.optim.Adam([ref], lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grad = torch.randn(2, 3, 2, 4, 4, generator=g)
        bank.adam_step(torch.tensor([1, 3]), grad, lr=0.1)
        ref.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(bank.codes_[[1, 3]], ref.detach(), atol=1e-6, rtol=1e-5)
    for i in (0, 2, 4):
        assert torch.equal(bank.codes_[i], before[i])
        assert bank.exp_avg[i].abs().sum() == 0 and bank.step[i] == 0
    assert bank.step.tolist() == [0, 3, 0, 3, 0]
    # a different scene's first step is a fresh Adam (bias correction from its own count)
    bank.adam_step(torch.tensor([0]), torch.ones(1, 3, 2, 4, 4), lr=0.1)
    torch.testing.assert_close(bank.codes_[0], before[0] - 0.1, atol=1e-6, rtol=0)


def test_gradients_reach_only_batch_codes():
    from minissd.nerf.decoder import TriplaneDecoder
    from minissd.nerf.render import render_rays
    torch.manual_seed(0)
    bank = CodeBank(4, C=2, R=8, init_scale=0.5, generator=torch.Generator().manual_seed(0))
    dec = TriplaneDecoder(2, hidden=16)
    idx = torch.tensor([2, 0])
    code_ = bank.get(idx)
    field = make_field(dec, code_activation(code_))
    o = torch.tensor([0.0, -2.6, 0.0]).expand(2, 10, 3)
    d = torch.nn.functional.normalize(torch.randn(2, 10, 3) * 0.1 + torch.tensor([0.0, 1.0, 0.0]), dim=-1)
    out = render_rays(field, o, d, 16)
    out["rgb"][0].sum().backward()                   # scene 2 only
    assert code_.grad[0].abs().sum() > 0 and code_.grad[1].abs().sum() == 0
    before = bank.codes_.clone()
    bank.adam_step(idx, code_.grad, lr=1e-2)
    changed = (bank.codes_ != before).flatten(1).any(1)
    assert changed.tolist() == [False, False, True, False]   # scene 0 had zero grad


def test_codebank_state_dict_roundtrip():
    bank = CodeBank(3, C=2, R=4)
    bank.adam_step(torch.tensor([1]), torch.randn(1, 3, 2, 4, 4), lr=0.1)
    other = CodeBank.from_state_dict(bank.state_dict())
    assert torch.equal(other.codes_, bank.codes_) and torch.equal(other.step, bank.step)
    assert torch.equal(other.exp_avg_sq, bank.exp_avg_sq)


def test_codebank_from_codes_leaves_the_global_rng_alone():
    """Finetuning builds a bank from given codes: no draw from torch's global generator."""
    from minissd.nerf.triplane import CodeBank, code_activation
    x = code_activation(torch.randn(2, 3, 4, 8, 8))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bank = CodeBank.from_codes(x)
    assert torch.equal(torch.rand(3), expected)
    assert torch.allclose(bank.activated(), x, atol=1e-5)
