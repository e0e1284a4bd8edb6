"""Known answers for guided sampling (eq. 5-6) and finetuning (eq. 7) on inputs where a
plausible wrong formula gives a different number (benchmarks/plant_bugs.py plants them).

The closed forms use a decoder with no density: it renders the white background
whatever the code, so the rendering loss of a view is a number worked out by hand. Guided
sampling is checked with TWO views (the 1/N_v of eq. 1 only shows with N_v > 1).
"""
import math

import torch

from minissd.config import TestConfig, get_preset
from minissd.data.cameras import intrinsics, orbit_poses
from minissd.nerf.autodecoder import lambda_rend
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.triplane import CodeBank
from minissd.prior.diffusion import NoiseSchedule
from minissd.testtime import finetune, guidance

Y = (0.2, 0.4, 0.6)
WHITE_ERR = 0.5 * ((1 - 0.2) ** 2 + (1 - 0.4) ** 2 + (1 - 0.6) ** 2)      # 0.58 per pixel


class WhiteDecoder(torch.nn.Module):
    """psi with sigma = 0 everywhere (still a function of the feature, so gradients exist)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, feat, dirs):
        return 0.0 * feat.sum(-1), torch.zeros(feat.shape[:-1] + (3,))


def views(n_views, res=4):
    """n_views constant-colour (0.2, 0.4, 0.6) views of res x res pixels, as guidance rays."""
    c2w = orbit_poses(n_views, radius=2.6)
    images = torch.tensor(Y).expand(n_views, res, res, 3)
    return guidance.views_to_rays(images, c2w, intrinsics(res))


def test_guidance_loss_with_two_views_by_hand():
    """Eq. 5's L_rend for N_v = 2 views of 4 x 4 pixels that all render white:
    lambda_rend(c, N_v) / N_v * sum over the 32 pixels of 0.5 ||1 - y||^2
    = 1 * (1 - exp(-0.2)) / 2 * 32 * 0.58. The same with a random subset of 10 rays per
    step, rescaled by 32 / 10 to estimate the full sum."""
    rays = views(2)
    want = (1 - math.exp(-0.2)) / 2 * 32 * WHITE_ERR
    x_t = torch.randn(3, 3, 2, 4, 4)
    t = torch.tensor([100, 500, 900])
    for n in (None, 10):
        gd = guidance.GuidedDenoiser(lambda x, t: 0.5 * x, NoiseSchedule(), WhiteDecoder(), rays,
                                     lambda_gd=1.0, omega=0.5, n_samples=8, n_views=2,
                                     rays_per_step=n, generator=torch.Generator().manual_seed(0))
        _, loss = gd.step(x_t, t)
        torch.testing.assert_close(loss, torch.full((3,), want))


def test_guided_step_clips_x0():
    """x0' = clip(x0_hat - lambda_gd sigma^2/alpha w(t) g, +-2): a huge lambda_gd pushes the
    unclipped estimate far beyond the code range, the step returns it clipped."""
    torch.manual_seed(0)
    dec = TriplaneDecoder(2, hidden=8)
    rays = views(1, res=4)
    x_t = torch.randn(1, 3, 2, 8, 8)
    t = torch.tensor([600])
    kw = dict(lambda_gd=1e6, omega=0.5, n_samples=8)
    free = guidance.GuidedDenoiser(lambda x, t: 0.5 * x, NoiseSchedule(), dec, rays, clip=None, **kw)
    clipped = guidance.GuidedDenoiser(lambda x, t: 0.5 * x, NoiseSchedule(), dec, rays, **kw)
    x_free, _ = free.step(x_t, t)
    x_clip, _ = clipped.step(x_t, t)
    assert x_free.abs().max() > 2.5
    torch.testing.assert_close(x_clip, x_free.clamp(-2, 2))


def tiny_finetune_setup():
    cfg = get_preset("smoke", n_samples=8, rays_per_scene=16)
    x = torch.full((1, 3, cfg.code_ch, cfg.code_res, cfg.code_res), 0.5)
    return cfg, x, views(1, res=4)


def test_finetune_learning_rate_decays_every_step(monkeypatch):
    """lr_k = lr * decay^k after k inner steps (all steps counted, not outer iterations):
    lr 0.1, decay 0.5, 2 outer x 2 inner -> 0.1, 0.05, 0.025, 0.0125."""
    cfg, x, rays = tiny_finetune_setup()
    lrs = []
    real_step = CodeBank.adam_step

    def recording(self, idx, grad, lr):
        lrs.append(lr)
        return real_step(self, idx, grad, lr)
    monkeypatch.setattr(CodeBank, "adam_step", recording)
    finetune.finetune(WhiteDecoder(), None, x, rays, cfg, 1, mode="rend", outer=2, lr=0.1,
                      tcfg=TestConfig(ft_inner=2, ft_lr_decay=0.5),
                      generator=torch.Generator().manual_seed(0))
    assert lrs == [0.1, 0.05, 0.025, 0.0125]


def test_finetune_rendering_weight_is_the_test_time_constant():
    """Eq. 7's rendering term weighs the per-ray mean error by ft_c_rend (1 - exp(-0.1 N_v))
    (TestConfig, not the training cfg.c_rend = 40): at ft_c_rend = 5 the first step's loss
    on a white render of y is 5 (1 - exp(-0.1)) 0.58 + code_reg * mean(0.5^2)."""
    cfg, x, rays = tiny_finetune_setup()
    losses = []
    finetune.finetune(WhiteDecoder(), None, x, rays, cfg, 1, mode="rend", outer=1,
                      tcfg=TestConfig(ft_inner=1, ft_c_rend=5.0),
                      generator=torch.Generator().manual_seed(0),
                      callback=lambda i, x, l: losses.append(l["rend"]))
    want = lambda_rend(5.0, 1) * WHITE_ERR + cfg.code_reg * 0.25
    assert abs(losses[0] - want) < 1e-5 * want
