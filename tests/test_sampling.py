import torch

from minissd.diffusion import NoiseSchedule
from minissd.sampling import ddim_sample, ddim_timesteps


def test_timesteps_official_spacing():
    ts = ddim_timesteps(1000, 50)
    assert ts[0] == 999 and ts[-1] == 19 and len(ts) == 50
    assert len(ddim_timesteps(1000, 75)) == 75 and ddim_timesteps(1000, 75).min() >= 0
    assert (ts[1:] < ts[:-1]).all()


def test_ddim_oracle_recovers_x0():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 6, 8, 8, generator=g) * 3.6 - 1.8
    for kind in ["linear", "cosine"]:
        s = NoiseSchedule(1000, kind)
        for eta in [0.0, 1.0]:
            x = ddim_sample(lambda x_t, t: x0, torch.randn(3, 6, 8, 8, generator=g), s,
                            steps=10, eta=eta, generator=g)
            assert torch.allclose(x, x0, atol=1e-6)


def _toy_denoise(x_t, t):
    return 0.5 * torch.tanh(x_t) + 0.001 * t.float().reshape(-1, 1)


def test_ddim_deterministic_and_eta_uses_generator():
    s = NoiseSchedule()
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(_toy_denoise, x_T, s, steps=20)
    b = ddim_sample(_toy_denoise, x_T, s, steps=20, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    c1 = ddim_sample(_toy_denoise, x_T, s, steps=20, eta=1.0,
                     generator=torch.Generator().manual_seed(3))
    c2 = ddim_sample(_toy_denoise, x_T, s, steps=20, eta=1.0,
                     generator=torch.Generator().manual_seed(3))
    c3 = ddim_sample(_toy_denoise, x_T, s, steps=20, eta=1.0,
                     generator=torch.Generator().manual_seed(4))
    assert torch.equal(c1, c2) and not torch.allclose(c1, c3) and not torch.allclose(a, c1)


def test_callback_and_clip():
    s = NoiseSchedule()
    seen = []
    x = ddim_sample(lambda x_t, t: 10 * torch.ones_like(x_t), torch.randn(2, 3), s, steps=5,
                    callback=lambda i, t, x_t, x0: seen.append((i, t, x0.max().item())))
    assert [i for i, _, _ in seen] == list(range(5)) and seen[0][1] == 999
    assert all(m == 2.0 for _, _, m in seen) and torch.allclose(x, 2 * torch.ones(2, 3))
