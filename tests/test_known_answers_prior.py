"""Known answers for the prior, the DDIM sampler, the weight EMA and the training steps,
on inputs where a plausible wrong formula gives a different number
(benchmarks/plant_bugs.py plants those formulas).

The lambda_diff statistic is checked on a non-zero-mean x0 (on zeros mean(x0)^2 and
mean(x0^2) agree); schedules at T != 1000 and the cosine closed form; the DDIM spacing at
75 steps (50 and 10 divide T, where several spacings coincide); the EMA ramp-up; and the
first code gradient of Algorithm 1 compared as a GRADIENT (the first Adam step is
~lr * sign(g), blind to most scale errors).
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from minissd.config import get_preset
from minissd.data.cameras import intrinsics, orbit_poses
from minissd.nerf.autodecoder import RayBatch, backward_rendering_loss, rendering_loss, sample_rays
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.triplane import CodeBank, code_activation
from minissd.prior.diffusion import DiffusionPrior, NoiseSchedule, prior_gradient
from minissd.prior.ema import ema_beta_at
from minissd.prior.sampling import ddim_timesteps
from minissd.ssd.train import Trainer


class LinearV(torch.nn.Module):
    """v_hat = k x_t: a denoiser with a closed form and no parameters to train."""

    def forward(self, x_t, t):
        return 0.3 * x_t


def small_prior(momentum=0.25, T=1000, schedule="linear"):
    cfg = SimpleNamespace(T=T, schedule=schedule, omega=0.5, x0_ema_momentum=momentum)
    return DiffusionPrior(cfg, net=LinearV())


def test_lambda_diff_statistic_is_mean_of_squares():
    """x0 = (1, 2, 3, -2): mean(x0^2) = 18/4 = 4.5 while mean(x0)^2 = 1. With m = 0.25 and
    the EMA starting at 1: EMA = 0.75 * 1 + 0.25 * 4.5 = 1.875, lambda_diff(4) = 4 / 1.875;
    a second update with x0 = 2 everywhere: 0.75 * 1.875 + 0.25 * 4 = 2.40625."""
    prior = small_prior(momentum=0.25)
    assert prior.lambda_diff(4.0) == pytest.approx(4.0)
    prior.update_x0_ema(torch.tensor([[1.0, 2.0, 3.0, -2.0]]))
    assert prior.x0_sq_ema.item() == pytest.approx(1.875)
    assert prior.lambda_diff(4.0) == pytest.approx(4.0 / 1.875)
    prior.update_x0_ema(torch.full((2, 3), 2.0))
    assert prior.x0_sq_ema.item() == pytest.approx(2.40625)


def test_linear_schedule_is_rescaled_for_any_T():
    """beta_t = linspace(1e-4 * 1000/T, 2e-2 * 1000/T, T): at T = 100 the betas run from 1e-3
    to 0.2, alphabar_t = prod_{s<=t} (1 - beta_s) (numpy, float64)."""
    T = 100
    betas = np.linspace(1e-3, 0.2, T)
    ab = np.cumprod(1 - betas)
    a, s = NoiseSchedule(T, "linear").alpha_sigma(torch.tensor([0, 10, 50, 99]))
    torch.testing.assert_close(a.double(), torch.tensor(np.sqrt(ab[[0, 10, 50, 99]])), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.double(), torch.tensor(np.sqrt(1 - ab[[0, 10, 50, 99]])),
                               atol=1e-6, rtol=0)


def test_cosine_schedule_closed_form():
    """Nichol & Dhariwal: alphabar_t = f(t + 1) / f(0), f(u) = cos((u/T + s)/(1 + s) pi/2)^2,
    s = 0.008 (the beta <= 0.999 clamp only acts at the last steps)."""
    T, s = 1000, 0.008
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    t = torch.tensor([0, 10, 500, 900, 990])
    a, _ = NoiseSchedule(T, "cosine").alpha_sigma(t)
    want = torch.tensor([math.sqrt(f(i + 1) / f(0)) for i in t.tolist()])
    torch.testing.assert_close(a, want, atol=1e-5, rtol=1e-4)


def test_ddim_spacing_when_steps_does_not_divide_T():
    """t_i = floor(T - 1 - i T / S). At S = 75, T / S = 13.33: 999, 985, 972, 959, ... and
    the last is floor(999 - 74 * 13.33) = floor(12.33) = 12."""
    ts = ddim_timesteps(1000, 75)
    assert ts[:4].tolist() == [999, 985, 972, 959]
    assert ts[-1].item() == 12 and ts[37].item() == math.floor(999 - 37 * 1000 / 75) == 505


def test_ema_ramp_up_known_values():
    """beta = 0.997 has half-life H = ln 0.5 / ln 0.997 = 230.7 iterations; with rampup
    0.05 the half-life after `it` iterations is min(H, 0.05 it): at it = 100 it is 5, so
    the rate is 0.5^(1/5) = 0.870551; at it = 10^5 it is H again: the rate is beta."""
    assert ema_beta_at(100, 0.997, 0.05) == pytest.approx(0.5 ** 0.2)
    assert ema_beta_at(100_000, 0.997, 0.05) == pytest.approx(0.997)
    assert ema_beta_at(0, 0.997, 0.05) == 0.0
    assert ema_beta_at(100, 0.997, 0.0) == 0.997


def test_prior_gradient_is_scaled_autograd_of_lambda_diff_loss():
    """g = grad_code scale * lambda_diff * sum_i L_diff(2 tanh(code_i)), lambda_diff = c / EMA,
    at a fixed (t, eps): EMA = 0.5 makes lambda_diff = 2 c, scale = 1/3 divides by B = 3."""
    prior = small_prior()
    prior.x0_sq_ema.fill_(0.5)
    g = torch.Generator().manual_seed(0)
    code_ = 0.4 * torch.randn(3, 3, 2, 4, 4, generator=g)
    t, eps = torch.tensor([30, 400, 900]), torch.randn(3, 3, 2, 4, 4, generator=g)
    got, _ = prior_gradient(prior, code_, 4.0, t=t, noise=eps, scale=1 / 3)
    c = code_.clone().requires_grad_(True)
    want, = torch.autograd.grad(8.0 / 3 * prior.loss(code_activation(c), t, eps).sum(), c)
    torch.testing.assert_close(got, want)


def tiny_data(n_scenes=3, n_views=2, res=8):
    g = torch.Generator().manual_seed(0)
    return {"images": torch.rand(n_scenes, n_views, res, res, 3, generator=g),
            "c2w": orbit_poses(n_views, radius=2.6).expand(n_scenes, -1, -1, -1).clone(),
            "K": intrinsics(res).expand(n_scenes, n_views, 3, 3).clone()}


def tiny_cfg(**kw):
    base = dict(image_res=8, scenes_per_batch=2, rays_per_scene=16, n_samples=8, iters=2,
                warmup=1, k_in_schedule=((0, 1),), diff_steps=1, x0_ema_momentum=0.5)
    base.update(kw)
    return get_preset("smoke", **base)


def test_first_code_gradient_is_the_gradient_of_eq4(monkeypatch):
    """The gradient the codes' Adam receives in Algorithm 1 (K_in = 1) is
    grad_code [ lambda_diff mean_i L_diff + mean_i L_rend ], lambda_diff = c_diff / EMA read
    BEFORE this batch updates the x0 EMA (here 1, the initial value; with momentum 0.5 a
    read after the update would double it), both terms averaged over the B = 2 scenes.
    Compared as a gradient: one Adam step is ~lr sign(g) and hides scale errors."""
    cfg = tiny_cfg()
    a, b = Trainer(cfg, tiny_data()), Trainer(cfg, tiny_data())
    with torch.no_grad():                       # codes of a trained size (mean(x0^2) ~ 0.4)
        for tr in (a, b):
            tr.bank.codes_.copy_(0.5 * torch.randn(tr.bank.codes_.shape,
                                                   generator=torch.Generator().manual_seed(3)))
    seen = []
    real_step = CodeBank.adam_step

    def recording(self, idx, grad, lr):
        seen.append(grad.clone())
        return real_step(self, idx, grad, lr)
    monkeypatch.setattr(CodeBank, "adam_step", recording)
    a.outer_step()
    b.set_learning_rates()
    idx = b.sample_scenes()
    code_ = b.bank.codes_[idx].clone().requires_grad_(True)
    x = code_activation(code_)
    total = cfg.c_diff / 1.0 * b.prior.loss(x, generator=b.gen).mean()
    rays = sample_rays(b.data, idx, cfg.rays_per_scene, b.gen)
    total = total + rendering_loss(b.decoder, x, *rays, cfg, b.n_views, generator=b.gen).mean()
    want, = torch.autograd.grad(total, code_)
    torch.testing.assert_close(seen[0], want, rtol=1e-4, atol=1e-8)


def test_rendering_loss_closed_form_and_scaled_backward():
    """A field with no density renders the white background: every ray's colour is (1, 1, 1).
    Against y = (0.2, 0.4, 0.6) the per-ray 0.5 ||y_hat - y||^2 (SUM over RGB) is
    0.5 (0.64 + 0.36 + 0.16) = 0.58, so with x = 0.5 everywhere
    L = c_rend (1 - exp(-0.1 N_v)) 0.58 + code_reg * 0.25. backward_rendering_loss with
    scale = 1/4 gives a quarter of the gradient of the summed loss."""
    cfg = get_preset("smoke", n_samples=8)
    empty = TriplaneDecoder(cfg.code_ch, cfg.dec_hidden)
    with torch.no_grad():
        empty.density_head.weight.zero_()
        empty.density_head.bias.fill_(-60.0)                       # sigma = e^-60 ~ 0
    o = torch.tensor([0.0, -2.6, 0.0]).expand(2, 5, 3)
    d = torch.tensor([0.0, 1.0, 0.0]).expand(2, 5, 3)
    y = torch.tensor([0.2, 0.4, 0.6]).expand(2, 5, 3)
    x = torch.full((2, 3, cfg.code_ch, cfg.code_res, cfg.code_res), 0.5)
    loss = rendering_loss(empty, x, o, d, y, cfg, 3, generator=torch.Generator().manual_seed(0))
    want = cfg.c_rend * (1 - math.exp(-0.3)) * 0.58 + cfg.code_reg * 0.25
    torch.testing.assert_close(loss, torch.full((2,), want))
    dec = TriplaneDecoder(cfg.code_ch, cfg.dec_hidden)
    rays = RayBatch(o, torch.nn.functional.normalize(d + 0.1 * torch.randn(2, 5, 3), dim=-1), y)
    code_ = (0.3 * torch.randn(x.shape)).requires_grad_(True)
    backward_rendering_loss(dec, code_, rays, cfg, 3, torch.tensor([0, 1]), scale=0.25,
                            generator=torch.Generator().manual_seed(1))
    c = code_.detach().clone().requires_grad_(True)
    ref = rendering_loss(dec, code_activation(c), *rays, cfg, 3,
                         generator=torch.Generator().manual_seed(1)).sum()
    want_g, = torch.autograd.grad(ref, c)
    torch.testing.assert_close(code_.grad, 0.25 * want_g)


def test_warmup_and_k_in_schedule_boundaries():
    """Warm-up factor (it + 1) / warmup: 1/4 at the first iteration of warmup = 4 (never 0);
    K_in schedule ((0, 4), (10, 2)): 4 up to iteration 9, 2 from iteration 10 on."""
    cfg = tiny_cfg(warmup=4, lr_decoder=1e-3, lr_denoiser=2e-3)
    tr = Trainer(cfg, tiny_data())
    tr.set_learning_rates()
    assert tr.opt_dec.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert tr.opt_prior.param_groups[0]["lr"] == pytest.approx(5e-4)
    sched = get_preset("smoke", k_in_schedule=((0, 4), (10, 2)))
    assert [sched.k_in(i) for i in (0, 9, 10, 11)] == [4, 4, 2, 2]
