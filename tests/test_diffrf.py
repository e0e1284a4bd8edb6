"""DiffRF (minissd/related/): trilinear voxel sampling, the denoised field of eq. (9),
L_RGB's gradient, resumable training and the command line."""
from dataclasses import replace

import pytest
import torch

from minissd.cli import main
from minissd.data.cameras import intrinsics, look_at
from minissd.nerf.autodecoder import sample_rays
from minissd.prior.diffusion import q_sample, x0_from_eps
from minissd.related.diffrf import (DiffRFModel, ImageGuidance, VoxelPrior, denoised_field, diffrf_losses,
                                    diffrf_preset, sample_grids)
from minissd.related.diffrf_train import train_diffrf
from minissd.related.voxel import VoxelField, sample_grid
from minissd.testtime.guidance import views_to_rays

TINY = dict(grid_res=8, unet_base=8, unet_mults=(1, 2), unet_groups=4, image_res=16,
            n_samples=8, fit_iters=4, fit_batch=2, fit_rays=32, iters=3, batch=2, rgb_rays=16,
            ddim_steps=3, T=50, ckpt_every=2)


def test_trilinear_hand_computed():
    # a 2^3 grid: vertices at -1 and 1. Only vertex (ix=1, iy=0, iz=0) holds 1, another channel
    # only vertex (0, 1, 0). At p = (0.5, -1, -1): weights 0.75 on x=+1, all on y=z=-1.
    g = torch.zeros(1, 2, 2, 2, 2)
    g[0, 0, 1, 0, 0] = 1.0
    g[0, 1, 0, 1, 0] = 1.0
    v = sample_grid(g, torch.tensor([[[0.5, -1.0, -1.0], [0.0, 0.0, 0.5]]]))   # (1, 2, 2)
    assert v[0, 0].tolist() == pytest.approx([0.75, 0.0])
    # centre-ish point (0, 0, 0.5): x weights 1/2, y weights 1/2, z weight 1/4 on z=-1
    assert v[0, 1].tolist() == pytest.approx([0.5 * 0.5 * 0.25, 0.5 * 0.5 * 0.25])


def test_trilinear_matches_formula_on_a_random_grid():
    G = 5
    g = torch.randn(1, 1, G, G, G, generator=torch.Generator().manual_seed(0))
    p = torch.tensor([0.3, -0.7, 0.55])
    u = (p + 1) / 2 * (G - 1)
    i0, w = u.floor().long(), u - u.floor()
    want = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                wt = ((w[0] if dx else 1 - w[0]) * (w[1] if dy else 1 - w[1]) * (w[2] if dz else 1 - w[2]))
                want += float(wt) * float(g[0, 0, i0[0] + dx, i0[1] + dy, i0[2] + dz])
    assert float(sample_grid(g, p.view(1, 1, 3))) == pytest.approx(want, abs=1e-5)


def test_voxel_field_density_and_colour_ranges():
    x = torch.zeros(1, 4, 4, 4, 4)
    x[:, 0] = -2.0
    sig, rgb = VoxelField(x)(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))
    assert torch.allclose(sig, torch.full_like(sig, torch.exp(torch.tensor(-10.0)).item()))
    assert torch.allclose(rgb, torch.full_like(rgb, 0.5))


def test_denoised_field_is_the_closed_form():
    cfg = replace(diffrf_preset("smoke"), **TINY)
    prior = VoxelPrior(cfg)
    torch.nn.init.normal_(prior.unet.out[-1].weight, std=0.1)       # eps_hat != 0
    g = torch.Generator().manual_seed(1)
    f0, eps = torch.randn(2, 4, 8, 8, 8, generator=g), torch.randn(2, 4, 8, 8, 8, generator=g)
    t = torch.tensor([3, 40])
    a, s = prior.schedule.alpha_sigma(t)
    f_t = q_sample(f0, eps, a, s)
    eps_hat = prior(f_t, t)
    closed = f0 + (s / a).view(-1, 1, 1, 1, 1) * (eps - eps_hat)
    assert torch.allclose(denoised_field(f0, eps, eps_hat, a, s), closed, atol=1e-5)
    assert torch.allclose(x0_from_eps(f_t, eps_hat, a, s), closed, atol=1e-4)
    rays = sample_rays({"images": torch.rand(2, 1, 4, 4, 3), "c2w": _cams(2), "K": _K(2)}, [0, 1], 8, g)
    out = diffrf_losses(prior, f0, rays, cfg, t=t, noise=eps)
    assert torch.allclose(out["f0_tilde"], closed, atol=1e-5)
    assert torch.allclose(out["rf"], (eps - eps_hat).pow(2).flatten(1).mean(1))


def test_rgb_loss_gradient_reaches_the_unet():
    cfg = replace(diffrf_preset("smoke"), **TINY)
    prior = VoxelPrior(cfg)
    torch.nn.init.normal_(prior.unet.out[-1].weight, std=0.1)
    g = torch.Generator().manual_seed(2)
    f0 = torch.randn(2, 4, 8, 8, 8, generator=g).clamp(-1.5, 1.5)
    rays = sample_rays({"images": torch.rand(2, 1, 4, 4, 3), "c2w": _cams(2), "K": _K(2)}, [0, 1], 16, g)
    out = diffrf_losses(prior, f0, rays, cfg, t=torch.tensor([1, 2]), generator=g)
    out["rgb"].sum().backward()                                      # L_RGB alone
    grads = [p.grad for p in prior.unet.parameters()]
    assert all(gr is not None for gr in grads)
    assert prior.unet.conv_in.weight.grad.abs().sum() > 0
    assert prior.unet.out[-1].weight.grad.abs().sum() > 0


def test_training_resumes_and_samples(made, tmp_path):
    cfg = replace(diffrf_preset("smoke"), **TINY)
    run = str(tmp_path / "run")
    tr = train_diffrf(cfg, made, run, progress=False, stop_after=5)
    assert tr.it == 5 and [r["phase"] for r in tr.log][-1] == "diffusion"
    tr2 = train_diffrf(cfg, made, run, progress=False)
    assert tr2.it == cfg.fit_iters + cfg.iters
    # a fresh run straight to the end gives the same UNet as the interrupted one
    tr3 = train_diffrf(cfg, made, str(tmp_path / "run3"), progress=False)
    for a, b in zip(tr2.prior.parameters(), tr3.prior.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    path = tr2.model().save(str(tmp_path / "model.pt"))
    model = DiffRFModel.load(path)
    x = sample_grids(model, 2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 4, 8, 8, 8) and x.abs().max() <= 2.0


def test_cli_errors_are_one_line(made, tmp_path, capsys):
    assert main(["train", "--model", "diffrf", "--preset", "gpu", "--data", made,
                 "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --preset gpu") and "\n" not in err
    assert main(["train", "--model", "diffrf", "--preset", "smoke", "--set", "grid_res=big",
                 "--data", made, "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "grid_res" in err and "\n" not in err


def _cams(n):
    return look_at(torch.tensor([[2.6, 0.3, 0.2]] * n)).reshape(n, 1, 4, 4)


def _K(n):
    return intrinsics(4).expand(n, 1, 3, 3)


def test_image_guidance_lowers_the_image_loss():
    cfg = replace(diffrf_preset("smoke"), **TINY)
    prior = VoxelPrior(cfg).eval()
    torch.nn.init.normal_(prior.unet.out[-1].weight, std=0.1)
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 4, 4, 3, generator=g)
    rays = views_to_rays(img, _cams(1)[0], _K(1)[0])
    x_t = torch.randn(1, 4, 8, 8, 8, generator=g)
    t = torch.tensor([10])
    plain = ImageGuidance(prior.denoise, rays, 0.0, 8, rays_per_step=None)
    guided = ImageGuidance(prior.denoise, rays, 50.0, 8, inner=3, rays_per_step=None)
    f_plain, f_guided = plain(x_t, t), guided(x_t, t)
    with torch.no_grad():
        assert float(guided.image_loss(f_guided)) < float(plain.image_loss(f_plain))
