import pytest
import torch

from minissd.config import get_preset
from minissd.prior.diffusion import (
    DiffusionPrior,
    NoiseSchedule,
    eps_from_v,
    eps_from_x0,
    loss_weight,
    q_sample,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from minissd.prior.ema import ema_copy, ema_update
from minissd.prior.sampling import ddim_sample
from minissd.prior.toy2d import MLPDenoiser, mixture_of_gaussians, mmd, toy_config, train_toy


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_alpha_sigma(kind):
    s = NoiseSchedule(1000, kind)
    t = torch.arange(1000)
    a, sg = s.alpha_sigma(t)
    assert torch.allclose(a ** 2 + sg ** 2, torch.ones(1000), atol=1e-5)
    assert (a[1:] <= a[:-1]).all() and a[0] > 0.99 and a[-1] < 0.01
    if kind == "linear":     # alphabar_0 = 1 - beta_0 = 1 - 1e-4
        assert abs(sg[0].item() ** 2 - 1e-4) < 1e-6
    with pytest.raises(ValueError):
        s.alpha_sigma(torch.tensor([1000]))


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    a, s = NoiseSchedule().alpha_sigma(torch.tensor([0, 10, 300, 700, 999]))
    x_t = q_sample(x0, eps, a, s)
    v = v_from_x0_eps(x0, eps, a, s)
    assert torch.allclose(x0_from_v(x_t, v, a, s), x0, atol=1e-5)
    assert torch.allclose(eps_from_v(x_t, v, a, s), eps, atol=1e-5)
    assert torch.allclose(eps_from_x0(x_t, x0, a, s)[1:], eps[1:], atol=1e-3)
    assert torch.allclose(x0_from_eps(x_t, eps, a, s)[:4], x0[:4], atol=1e-3)


def test_v_x0_eps_closed_form_signs():
    """v = alpha eps - sigma x0 (Salimans & Ho), x0 = alpha x_t - sigma v,
    eps = sigma x_t + alpha v. Round trips cannot see a flipped sign convention; values can."""
    a, s = torch.tensor([0.6]), torch.tensor([0.8])
    x0, eps = torch.tensor([[0.3]]), torch.tensor([[-1.2]])
    x_t = q_sample(x0, eps, a, s)
    assert x_t.item() == pytest.approx(0.6 * 0.3 + 0.8 * -1.2)              # -0.78
    assert v_from_x0_eps(x0, eps, a, s).item() == pytest.approx(0.6 * -1.2 - 0.8 * 0.3)  # -0.96
    assert x0_from_v(x_t, torch.tensor([[-0.96]]), a, s).item() == pytest.approx(0.3)
    assert eps_from_v(x_t, torch.tensor([[-0.96]]), a, s).item() == pytest.approx(-1.2)
    g = torch.Generator().manual_seed(1)
    x0, eps, v = (torch.randn(4, 2, 3, generator=g) for _ in range(3))
    a, s = NoiseSchedule().alpha_sigma(torch.tensor([0, 250, 600, 999]))
    A, S = a[:, None, None], s[:, None, None]
    torch.testing.assert_close(v_from_x0_eps(x0, eps, a, s), A * eps - S * x0)
    torch.testing.assert_close(x0_from_v(x0, v, a, s), A * x0 - S * v)      # x0 as "x_t" here
    torch.testing.assert_close(eps_from_v(x0, v, a, s), S * x0 + A * v)


class _ConstantV(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x_t, t):
        return self.k * x_t                        # v_hat = k x_t


def _const_prior(k=0.3, omega=0.5):
    from types import SimpleNamespace
    return DiffusionPrior(SimpleNamespace(T=1000, schedule="linear", omega=omega), net=_ConstantV(k))


def test_prior_denoise_reads_v_as_x0():
    prior = _const_prior(k=0.3)
    x_t, t = torch.randn(3, 5), torch.tensor([10, 500, 990])
    a, s = prior.schedule.alpha_sigma(t)
    want = (a[:, None] - 0.3 * s[:, None]) * x_t           # alpha x_t - sigma v_hat
    torch.testing.assert_close(prior.denoise(x_t, t), want.clamp(-2, 2))


def test_prior_loss_gradient_through_input_and_target_by_hand():
    """d/dx0 of 0.5 w mean((x0_hat(x_t(x0)) - x0)^2) with v_hat = k x_t, so that
    x0_hat = (alpha - sigma k) x_t = (alpha - sigma k)(alpha x0 + sigma eps):
        dL/dx0 = w / D * (x0_hat - x0) * ((alpha - sigma k) alpha - 1).
    The '- 1' is the target's share; a detached target (or input) changes it."""
    k, omega = 0.3, 0.5
    prior = _const_prior(k, omega)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([50, 400, 800])
    loss = prior.loss(x0, t, eps)
    grad, = torch.autograd.grad(loss.sum(), x0)
    a, s = (v.double()[:, None, None, None] for v in prior.schedule.alpha_sigma(t))
    w = (a / s) ** (2 * omega)
    D = x0[0].numel()
    x0d = x0.detach()
    x0_hat = (a - s * k) * (a * x0d + s * eps)
    torch.testing.assert_close(loss.detach(), (0.5 * w * (x0_hat - x0d) ** 2).flatten(1).mean(1).flatten())
    want = w / D * (x0_hat - x0d) * ((a - s * k) * a - 1)
    torch.testing.assert_close(grad, want)
    detached_target = w / D * (x0_hat - x0d) * ((a - s * k) * a)
    assert (grad - detached_target).abs().max() > 1e-3


def test_q_sample_statistics():
    g = torch.Generator().manual_seed(0)
    s = NoiseSchedule()
    x0 = torch.full((20000, 2), 1.5)
    for t, mean, std in [(0, 1.5, 0.01), (999, 0.0, 1.0)]:
        a, sg = s.alpha_sigma(torch.full((20000,), t))
        x = q_sample(x0, torch.randn(20000, 2, generator=g), a, sg)
        assert abs(x.mean().item() - mean) < 0.03 * max(std, 0.1)
        assert abs(x.std().item() / std - 1) < 0.03


def test_loss_weight_values():
    a, s = torch.tensor([0.6]), torch.tensor([0.8])
    assert torch.allclose(loss_weight(a, s, 0.5), a / s)
    assert torch.allclose(loss_weight(a, s, 0.0), torch.ones(1))


def test_prior_loss_grads_and_ema():
    cfg = get_preset("smoke")
    prior = DiffusionPrior(cfg)
    C, R = 3 * cfg.code_ch, cfg.code_res
    x0 = (0.5 * torch.randn(2, C, R, R)).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    loss = prior.loss(x0, generator=g)
    assert loss.shape == (2,) and (loss > 0).all()
    loss.sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0
    unet_grads = [p.grad.abs().sum() for p in prior.unet.parameters() if p.grad is not None]
    assert len(unet_grads) == len(list(prior.unet.parameters()))
    assert sum(unet_grads) > 0
    # same t/noise -> same loss (the gradient through x_t and the target is checked by
    # test_prior_loss_gradient_through_input_and_target_by_hand)
    t, n = torch.tensor([500, 500]), torch.randn(2, C, R, R)
    assert torch.allclose(prior.loss(x0, t, n), prior.loss(x0, t, n))
    # x0 EMA and lambda_diff, saved in the state dict
    assert prior.lambda_diff(4.0) == pytest.approx(4.0)
    for _ in range(3):
        prior.update_x0_ema(torch.zeros(2, C, R, R))
    assert prior.x0_sq_ema.item() == pytest.approx((1 - cfg.x0_ema_momentum) ** 3, rel=1e-5)
    assert "x0_sq_ema" in prior.state_dict()
    assert prior.lambda_diff(1.0) > 1.0
    ema = ema_copy(prior)
    assert all(not p.requires_grad for p in ema.parameters())
    p0 = next(prior.unet.parameters())
    with torch.no_grad():
        p0.add_(1.0)
    before = next(ema.unet.parameters()).clone()
    prior.x0_sq_ema.fill_(0.25)
    ema_update(ema, prior, 0.9)
    after = next(ema.unet.parameters())
    assert torch.allclose(after, 0.9 * before + 0.1 * p0.detach(), atol=1e-6)
    assert ema.x0_sq_ema.item() == 0.25


def test_denoise_clips():
    cfg = get_preset("smoke")
    prior = DiffusionPrior(cfg)
    x = 50 * torch.randn(2, 3 * cfg.code_ch, cfg.code_res, cfg.code_res)
    with torch.no_grad():
        y = prior.denoise(x, torch.tensor([0, 5]))
    assert y.abs().max() <= 2.0 + 1e-6 and y.shape == x.shape


def test_toy_2d_training_beats_noise():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = mixture_of_gaussians(4000, generator=g)
    held = mixture_of_gaussians(800, generator=g)
    prior = DiffusionPrior(toy_config(), net=MLPDenoiser(hidden=128))
    noise = torch.randn(800, 2, generator=g)
    losses = train_toy(prior, data, iters=800, lr=1e-2, generator=g)
    x = ddim_sample(prior.denoise, noise, prior.schedule, steps=30)
    m_noise, m_sample = mmd(noise, held), mmd(x, held)
    assert sum(losses[-50:]) < sum(losses[:50])
    assert m_sample < 0.3 * m_noise, (m_sample, m_noise)
