"""CodeNeRF (minissd/related/codenerf.py, codenerf_fit.py) and code swapping (editing.py)."""
import os

import torch

from minissd.related import editing
from minissd.related.codenerf import CodeNeRF, CodeNeRFConfig, CodeNeRFNet, LatentBank, load_any
from minissd.related.codenerf_fit import train_codenerf

TINY = dict(latent=8, hidden=16, iters=4, rays_per_scene=32, scenes_per_batch=2, n_samples=8,
            image_res=16, ckpt_every=2)


def test_density_sees_only_the_shape_code():
    torch.manual_seed(0)
    net = CodeNeRFNet(CodeNeRFConfig(latent=8, hidden=16))
    xyz, d = torch.rand(1, 50, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(1, 50, 3), dim=-1)
    z = torch.randn(1, 2, 8)
    other_tex = editing.swap_codes(z, torch.randn(1, 2, 8), "texture")
    other_shape = editing.swap_codes(z, torch.randn(1, 2, 8), "shape")
    s0, c0 = net(xyz, d, z)
    s1, c1 = net(xyz, d, other_tex)
    s2, _ = net(xyz, d, other_shape)
    assert torch.equal(s0, s1) and not torch.allclose(c0, c1)        # texture: colour only
    assert not torch.allclose(s0, s2)                                # shape: density
    assert torch.equal(net.density(xyz, z), s0)


def test_editing_swaps_exactly_the_code_it_names():
    z = torch.randn(3, 2, 5)
    g = editing.grid_codes(z)                                         # (3, 3, 2, 5)
    for i in range(3):
        for j in range(3):
            assert torch.equal(g[i, j, 0], z[i, 0]) and torch.equal(g[i, j, 1], z[j, 1])
    s = editing.swap_codes(z[0], z[1], "shape")
    assert torch.equal(s[0], z[1, 0]) and torch.equal(s[1], z[0, 1])
    x = torch.randn(2, 3, 4, 6, 6)
    t = editing.swap_triplane(x[0], x[1], planes=(1,))
    assert torch.equal(t[1], x[1, 1]) and torch.equal(t[0], x[0, 0]) and torch.equal(t[2], x[0, 2])
    c = editing.grid_triplanes(x, channels=slice(0, 2))
    assert torch.equal(c[0, 1, :, :2], x[1, :, :2]) and torch.equal(c[0, 1, :, 2:], x[0, :, 2:])
    assert torch.equal(c[1, 1], x[1])                                  # the diagonal is unchanged


def test_latent_bank_steps_only_its_batch():
    bank = LatentBank(4, 6, generator=torch.Generator().manual_seed(0))
    before = bank.codes_.clone()
    bank.adam_step(torch.tensor([1, 3]), torch.ones(2, 2, 6), lr=0.1)
    assert torch.equal(bank.codes_[[0, 2]], before[[0, 2]])
    assert torch.allclose(bank.codes_[[1, 3]], before[[1, 3]] - 0.1, atol=1e-6)
    assert bank.step.tolist() == [0, 1, 0, 1]


def test_training_resumes_to_the_same_model(made, tmp_path):
    """Stopped after 2 of 4 iterations and resumed == 4 in one go (atomic checkpoints)."""
    cfg = CodeNeRFConfig.from_preset("smoke", **TINY)
    a = train_codenerf(cfg, made, str(tmp_path / "a"), "cpu", progress=False)
    train_codenerf(cfg, made, str(tmp_path / "b"), "cpu", progress=False, stop_after=2)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["it"] == 2
    b = train_codenerf(cfg, made, str(tmp_path / "b"), "cpu", progress=False)
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert torch.equal(a.codes, b.codes) and len(b.log) == 4
    m = load_any(str(tmp_path / "b" / "model.pt"))                    # fp16 model file
    assert isinstance(m, CodeNeRF) and torch.allclose(m.codes, b.codes, atol=1e-2)
    assert not [f for f in os.listdir(tmp_path / "b") if f.startswith(".tmp")]
