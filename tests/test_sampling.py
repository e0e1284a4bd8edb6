import json
import os

import numpy as np
import pytest
import torch

from minissd.prior import sampling
from minissd.prior.diffusion import DiffusionPrior, NoiseSchedule
from minissd.prior.sampling import ddim_sample, ddim_timesteps


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


# ------------------------------------------------------------------ every DDIM step, pinned
# tests/data/ddim_v_linear_10.json is a 10-step run of an independent DDIM implementation
# (diffusers' DDIMScheduler, see tests/data/make_ddim_fixture.py) with v-prediction on the
# linear schedule. The last step lands on x0_hat whatever the intermediate coefficients,
# so every intermediate state is compared.
FIXTURE = os.path.join(os.path.dirname(__file__), "data", "ddim_v_linear_10.json")


class ToyV(torch.nn.Module):
    """v_hat(x_t, t), the same function as make_ddim_fixture.toy_v."""

    def forward(self, x, t):
        return 3.0 * torch.tanh(x) * torch.cos(t.double() / 400.0).float()[:, None] + 0.1 * x


def _toy_prior():
    from types import SimpleNamespace
    return DiffusionPrior(SimpleNamespace(T=1000, schedule="linear", omega=0.5), net=ToyV())


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_every_ddim_step_matches_independent_implementation(eta, monkeypatch):
    with open(FIXTURE) as f:
        ref = json.load(f)
    want = ref[f"eta{eta:g}"]
    noises = [torch.tensor(n) for n in ref["noises"]]
    if eta > 0:                  # feed minissd the fixture's noise, in order
        monkeypatch.setattr(sampling, "randn_like", lambda x, g=None: noises.pop(0))
    prior = _toy_prior()
    assert ddim_timesteps(1000, 10).tolist() == ref["timesteps"]
    states, x0s = [], []
    x = ddim_sample(prior.denoise, torch.tensor(ref["x_T"]), prior.schedule, steps=10, eta=eta,
                    callback=lambda i, t, x_t, x0: (states.append(x_t.clone()), x0s.append(x0)))
    states.append(x)
    assert len(states) == 11 and len(noises) == (0 if eta > 0 else 9)   # 9 draws: none at the end
    for i in range(10):
        torch.testing.assert_close(x0s[i], torch.tensor(want["x0_hat"][i]), atol=2e-5, rtol=0)
    for i in range(11):
        torch.testing.assert_close(states[i], torch.tensor(want["states"][i]), atol=2e-5, rtol=0,
                                   msg=f"state after {i} DDIM steps")


def test_ddim_step_closed_form_eta0():
    """x_s = alpha_s x0 + sigma_s (x_t - alpha_t x0) / sigma_t, alphas from the betas in numpy."""
    betas = np.linspace(1e-4, 2e-2, 1000)
    ab = np.cumprod(1 - betas)
    s = NoiseSchedule(1000, "linear")
    g = torch.Generator().manual_seed(5)
    x_t, x0 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for t, u in [(999, 899), (500, 480), (120, 20)]:
        at, st, au, su = ab[t] ** 0.5, (1 - ab[t]) ** 0.5, ab[u] ** 0.5, (1 - ab[u]) ** 0.5
        want = au * x0 + su * (x_t - at * x0) / st
        torch.testing.assert_close(sampling.ddim_step(x0, x_t, t, u, s), want.float(),
                                   atol=1e-5, rtol=0)
