"""Image-guided sampling (eq. 5, 6), finetuning (eq. 7) and reconstruction."""
import math
from types import SimpleNamespace

import pytest
import torch

from minissd.config import TestConfig, get_preset
from minissd.data.cameras import intrinsics, orbit_poses
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.triplane import make_field
from minissd.prior.diffusion import DiffusionPrior
from minissd.prior.sampling import ddim_sample
from minissd.testtime import finetune, guidance


def tiny_model(seed=0):
    """Untrained smoke-sized networks, frozen like ssd.model.Model's."""
    torch.manual_seed(seed)
    cfg = get_preset("smoke")
    dec, prior = TriplaneDecoder(cfg.code_ch, cfg.dec_hidden), DiffusionPrior(cfg)
    for p in list(dec.parameters()) + list(prior.parameters()):
        p.requires_grad_(False)
    codes = 0.5 * torch.randn(3, 3, cfg.code_ch, cfg.code_res, cfg.code_res)
    return SimpleNamespace(cfg=cfg, decoder=dec, prior=prior, codes=codes, names=[],
                           field=lambda x: make_field(dec, x))


def one_view(m, code, res=16):
    from minissd.testtime.generate import render_views
    c2w = orbit_poses(3, radius=2.6)[:1]
    K = intrinsics(res)
    return {"images": render_views(m, code, c2w, K, res=res), "c2w": c2w, "K": K}


def test_guidance_scale_is_sigma_for_omega_half():
    m = tiny_model()
    t = torch.tensor([10, 500, 990])
    a, s = m.prior.schedule.alpha_sigma(t)
    assert torch.allclose(guidance.guidance_scale(a, s, 0.5), s, rtol=1e-5)
    assert torch.allclose(guidance.guidance_scale(a, s, 0.0), s ** 2 / a, rtol=1e-5)


def test_views_to_rays_shapes_and_targets():
    m = tiny_model()
    v = one_view(m, m.codes[0], res=8)
    o, d, y = guidance.views_to_rays(v["images"], v["c2w"], v["K"])
    assert o.shape == d.shape == y.shape == (1, 64, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, 64), atol=1e-5)
    assert torch.equal(y[0, 9], v["images"][0, 1, 1])            # row-major pixels
    sub = guidance.subset_rays((o, d, y), 10, torch.Generator().manual_seed(0))
    assert sub[0].shape == (1, 10, 3)


def test_lambda_zero_equals_plain_ddim_exactly():
    m = tiny_model()
    rays = guidance.views_to_rays(**one_view(m, m.codes[0]))
    x_T = torch.randn(2, 3, m.cfg.code_ch, m.cfg.code_res, m.cfg.code_res,
                      generator=torch.Generator().manual_seed(1))
    plain = ddim_sample(m.prior.denoise, x_T, m.prior.schedule, steps=4)
    wrapped = guidance.GuidedDenoiser(m.prior.denoise, m.prior.schedule, m.decoder, rays,
                                      lambda_gd=0.0, omega=m.prior.omega, n_samples=m.cfg.n_samples)
    same = ddim_sample(wrapped, x_T, m.prior.schedule, steps=4)
    assert len(wrapped.losses) == 4                              # it did render every step
    assert torch.equal(plain, same)
    guided = guidance.GuidedDenoiser(m.prior.denoise, m.prior.schedule, m.decoder, rays,
                                     lambda_gd=1e3, omega=m.prior.omega, n_samples=m.cfg.n_samples)
    assert not torch.equal(plain, ddim_sample(guided, x_T, m.prior.schedule, steps=4))


def test_guidance_gradient_flows_through_denoiser():
    """Eq. 5: the correction is grad wrt x_t THROUGH phi, i.e. J_phi^T grad_x0 L."""
    m = tiny_model()
    rays = guidance.views_to_rays(**one_view(m, m.codes[0], res=8))
    x_t = torch.randn(1, 3, m.cfg.code_ch, m.cfg.code_res, m.cfg.code_res)
    t = torch.tensor([700])
    lam = 5.0
    guided = guidance.GuidedDenoiser(m.prior.denoise, m.prior.schedule, m.decoder, rays,
                                     lambda_gd=lam, omega=m.prior.omega, n_samples=m.cfg.n_samples,
                                     clip=None)
    out = guided(x_t, t)
    # reference: the same gradient by a vector-Jacobian product written out by hand
    x0 = m.prior.denoise(x_t, t).requires_grad_(True)
    loss = guidance.observed_views_loss(m.decoder, x0, rays, m.cfg.n_samples,
                                        guidance.lambda_rend(1.0, 1))
    g_x0, = torch.autograd.grad(loss.sum(), x0)
    _, vjp = torch.autograd.functional.vjp(lambda z: m.prior.denoise(z, t), x_t, g_x0)
    a, s = m.prior.schedule.alpha_sigma(t)
    expect = x0.detach() - lam * guidance.guidance_scale(a, s, m.prior.omega) * vjp
    assert torch.allclose(out, expect, atol=1e-5)


def test_finetune_schedules():
    from minissd.config import TestConfig
    paper = TestConfig(ft_lr_scale=1.0)
    assert paper.finetune_schedule(1) == (25, 5e-3)
    assert paper.finetune_schedule(2) == (50, 1e-2)
    assert paper.finetune_schedule(3) == (50, 1e-2)
    assert paper.finetune_schedule(8) == (160, 4e-2)
    assert paper.finetune_schedule(32) == (200, 8e-2)
    assert TestConfig(ft_lr_scale=0.5).finetune_schedule(1) == (25, 2.5e-3)


def test_test_config_overrides_are_type_checked():
    from minissd.config import TestConfig
    t = TestConfig().with_overrides(["lambda_gd=12", "ft_inner=2"])
    assert t.lambda_gd == 12.0 and isinstance(t.lambda_gd, float) and t.ft_inner == 2
    for bad in ("nope=1", "ft_inner=0.5", "lambda_gd", "lambda_gd=abc"):
        with pytest.raises(ValueError, match="test-set"):
            TestConfig().with_overrides([bad])
    assert TestConfig.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("mode", ["rend+diff", "rend"])
def test_finetune_changes_only_the_code(mode):
    m = tiny_model()
    rays = guidance.views_to_rays(**one_view(m, m.codes[0]))
    before = {k: v.clone() for k, v in list(m.decoder.state_dict().items())
              + [("prior." + k, v) for k, v in m.prior.state_dict().items()]}
    x0 = m.codes[1:2].clone()
    losses = []
    x = finetune.finetune(m.decoder, m.prior, x0, rays, m.cfg, n_views=1, mode=mode, outer=5,
                          generator=torch.Generator().manual_seed(0),
                          callback=lambda i, x, l: losses.append(l["rend"]))
    after = {k: v for k, v in list(m.decoder.state_dict().items())
             + [("prior." + k, v) for k, v in m.prior.state_dict().items()]}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in list(m.decoder.parameters()) + list(m.prior.parameters()))
    assert x.shape == x0.shape and not torch.equal(x, x0)
    assert torch.equal(m.codes[1:2], x0)                         # input not modified in place
    assert x.abs().max() <= 2.0 and len(losses) == 5 * TestConfig().ft_inner
    assert math.isfinite(losses[-1])


def test_finetune_none_is_identity():
    m = tiny_model()
    rays = guidance.views_to_rays(**one_view(m, m.codes[0], res=8))
    x0 = m.codes[:1]
    assert torch.equal(finetune.finetune(m.decoder, m.prior, x0, rays, m.cfg, 1, mode="none"), x0)
    with pytest.raises(ValueError, match="mode"):
        finetune.finetune(m.decoder, m.prior, x0, rays, m.cfg, 1, mode="diff")


def test_ablation_table_and_input_views():
    from minissd.testtime.reconstruct import ABLATIONS, input_view_ids
    assert ABLATIONS["A0"] == ("single-stage", "rend+diff")
    assert ABLATIONS["A1"][0] == "two-stage" and ABLATIONS["A3"][1] == "none"
    assert input_view_ids(251, 1) == [64] and input_view_ids(251, 2) == [64, 104]
    ids = input_view_ids(24, 4)
    assert len(ids) == 4 and all(0 <= i < 24 for i in ids)


@pytest.fixture(scope="module")
def smoke_model():
    """The briefly trained smoke model (trained once, then cached by ssd/model.py)."""
    from minissd.ssd.model import load_or_train
    return load_or_train("single-stage", get_preset("smoke"), progress=False)


@pytest.fixture(scope="module")
def test_scene(smoke_model):
    from minissd.data.procedural import ensure_dataset
    from minissd.data.srn import SRNDataset
    res = smoke_model.cfg.image_res
    root = ensure_dataset("cars", "test", n_scenes=1, n_views=24, resolution=res, progress=False)
    return SRNDataset(root, resolution=res)[0]


def test_guided_reconstruction_beats_unguided_sampling(smoke_model, test_scene):
    from minissd.testtime.reconstruct import reconstruct_scene
    inp, ev = [6], list(range(0, 24, 4))
    score = {}
    for lam in (0.0, None):                   # None: the default guidance scale
        r = reconstruct_scene(smoke_model, test_scene, inp, eval_ids=inp + ev, finetune="none",
                              lambda_gd=lam, generator=torch.Generator().manual_seed(0))
        score[lam] = (float(r["psnr"][0]), float(r["psnr"][1:].mean()))   # input, novel
    assert score[None][0] > score[0.0][0] + 0.1, score        # fits the observed view
    assert score[None][1] > score[0.0][1] + 0.2, score         # and transfers to novel views
    # (measured on the smoke model: +4.8 dB on the input view, +0.78 dB on novel views)


def test_finetune_rend_diff_adds_exactly_the_cached_prior_gradient(monkeypatch):
    """rend+diff = rend + the cached prior gradient (diffusion.prior_gradient), once per outer
    iteration. It gets its own generator here so that both modes draw the same rays."""
    m = tiny_model()
    m.prior.x0_sq_ema.fill_(0.25)                                 # lambda'_diff = 1 / 0.25 = 4
    rays = guidance.views_to_rays(**one_view(m, m.codes[0]))
    x0 = m.codes[1:2].clone()
    real_prior_grad, priors = finetune.prior_gradient, []

    def own_rng_prior_grad(prior, code_, c, generator=None):
        g, l = real_prior_grad(prior, code_, c, generator=torch.Generator().manual_seed(7))
        priors.append(g.clone())
        return g, l
    monkeypatch.setattr(finetune, "prior_gradient", own_rng_prior_grad)
    seen = []

    from minissd.nerf.triplane import CodeBank
    real_step = CodeBank.adam_step

    def recording_step(self, idx, grad, lr):                    # the gradient each update gets
        seen.append(grad.clone())
        return real_step(self, idx, grad, lr)
    monkeypatch.setattr(CodeBank, "adam_step", recording_step)

    out = {}
    for mode in ("rend", "rend+diff"):
        seen.clear()
        out[mode] = (finetune.finetune(m.decoder, m.prior, x0, rays, m.cfg, n_views=1, mode=mode,
                                       tcfg=TestConfig(ft_inner=2, ft_rays=64, ft_c_diff=1.0), outer=2,
                                       generator=torch.Generator().manual_seed(0)),
                     list(seen))
    assert len(priors) == 2                                       # once per outer iteration
    assert not torch.allclose(out["rend"][0], out["rend+diff"][0])
    g_rend, g_both = out["rend"][1][0], out["rend+diff"][1][0]   # first step: same code, same rays
    assert priors[0].abs().max() > 0
    torch.testing.assert_close(g_both - g_rend, priors[0], atol=1e-6, rtol=1e-4)
    # the cached gradient is the gradient of lambda'_diff * L_diff(2 tanh(code_)) by autograd
    from minissd.nerf.triplane import code_activation, code_inverse_activation, planes_to_image
    code_ = code_inverse_activation(x0).requires_grad_(True)
    loss = m.prior.loss(planes_to_image(code_activation(code_)),
                        generator=torch.Generator().manual_seed(7))
    want, = torch.autograd.grad(4.0 * loss.sum(), code_)
    torch.testing.assert_close(priors[0], want)
