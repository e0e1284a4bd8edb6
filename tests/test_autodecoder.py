"""Auto-decoder: ray sampling, lambda_rend, per-scene loss, a short training run."""
import math

import torch

from minissd.config import get_preset
from minissd.data import cameras
from minissd.nerf import autodecoder
from minissd.nerf.autodecoder import (
    MEAN_CODE_MOMENTUM,
    STAGE1_RECIPE,
    Recipe,
    autodecoder_iteration,
    heldout_psnr,
    lambda_rend,
    rendering_loss,
    sample_rays,
    train_autodecoder,
    tv_regulariser,
)
from minissd.nerf.decoder import TriplaneDecoder
from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.render import render_image
from minissd.nerf.triplane import CodeBank, code_activation


def blob(shift):
    def field(xyz, dirs):
        r = (((xyz - torch.tensor([shift, 0.0, 0.0])) / torch.tensor([0.6, 0.4, 0.3])) ** 2).sum(-1)
        rgb = torch.stack([0.5 + 0.5 * xyz[..., 0], torch.full_like(r, 0.3 + shift),
                           0.5 - 0.4 * xyz[..., 2]], -1).clamp(0, 1)
        return 30.0 * (r < 1).float(), rgb
    return field


def toy_scenes(n_views=8, res=16):
    c2w = cameras.random_sphere_poses(n_views, radius=2.6, generator=torch.Generator().manual_seed(0))
    K = cameras.intrinsics(res)
    imgs = torch.stack([render_image(blob(s), c2w, K, res, res, 48)["rgb"] for s in (0.0, 0.3)])
    return {"images": imgs, "c2w": c2w.expand(2, -1, -1, -1).clone(),
            "K": K.expand(2, n_views, 3, 3).clone(), "names": ["a", "b"]}


def test_lambda_rend():
    # on a per-ray MEAN the weight is c (1 - exp(-0.1 N_v)), with no 1/N_v (eq. 1's sum has it)
    assert abs(lambda_rend(1.0, 50) - (1 - math.exp(-5))) < 1e-12
    assert abs(lambda_rend(40.0, 1) - 40 * (1 - math.exp(-0.1))) < 1e-12
    assert lambda_rend(1.0, 1) < lambda_rend(1.0, 3) < lambda_rend(1.0, 50)   # fewer views, less weight
    # the official balance: 20 x 3 x (1 - exp(-0.1 N_v)) x per-channel MSE == 40 x 0.5 x RGB sum
    assert abs(lambda_rend(40.0, 3) * 0.5 * 3 - 20 * 3 * (1 - math.exp(-0.3))) < 1e-9


def test_sample_rays_hit_the_right_pixels():
    V, H, W = 3, 4, 5
    c2w = cameras.orbit_poses(V, radius=2.6)
    K = cameras.intrinsics(H).clone()
    code = torch.arange(V * H * W, dtype=torch.float32).reshape(V, H, W)
    images = torch.stack([code, code * 0, code * 0], -1)[None].repeat(2, 1, 1, 1, 1)
    images[1] += 1000
    data = {"images": images, "c2w": c2w.expand(2, -1, -1, -1), "K": K.expand(2, V, 3, 3)}
    o, d, y = sample_rays(data, torch.tensor([1, 0]), 64, torch.Generator().manual_seed(0))
    assert o.shape == d.shape == y.shape == (2, 64, 3)
    assert (y[0, :, 0] >= 1000).all() and (y[1, :, 0] < 1000).all()   # scene order kept
    assert set(y[1, :, 0].long().tolist()) <= set(range(V * H * W))
    # each ray is exactly the pixel_rays ray of the pixel whose value it returned
    o_all, d_all = cameras.pixel_rays(c2w, K, H, W)                      # (V, H, W, 3)
    for n in range(64):
        k = int(y[1, n, 0])
        v, i, j = k // (H * W), (k // W) % H, k % W
        torch.testing.assert_close(d[1, n], d_all[v, i, j], atol=1e-5, rtol=0)
        torch.testing.assert_close(o[1, n], o_all[v, i, j])


def test_rendering_loss_is_per_scene():
    cfg = get_preset("smoke", n_samples=16)
    torch.manual_seed(0)
    dec = TriplaneDecoder.from_config(cfg)
    data = toy_scenes()
    bank = CodeBank(2, cfg.code_ch, cfg.code_res, init_scale=0.3, generator=torch.Generator().manual_seed(0))
    code_ = bank.get(torch.tensor([0, 1]))
    rays = sample_rays(data, torch.tensor([0, 1]), 32, torch.Generator().manual_seed(0))
    loss = rendering_loss(dec, code_activation(code_), *rays, cfg, 8,
                          generator=torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and (loss > 0).all()
    loss[1].backward()
    assert code_.grad[0].abs().sum() == 0 and code_.grad[1].abs().sum() > 0


def test_smoke_autodecoder_lowers_the_loss():
    data = toy_scenes()
    train = {k: (v[:, :6] if torch.is_tensor(v) else v) for k, v in data.items()}
    held = {k: (v[:, 6:] if torch.is_tensor(v) else v) for k, v in data.items()}
    cfg = get_preset("smoke", n_samples=24, rays_per_scene=128, lr_code=3e-2, lr_decoder=3e-3)
    bank, dec, log = train_autodecoder(cfg, train, 60, progress=False, log_every=5,
                                       occ_warmup=30, occ_every=10)
    first = sum(r["mse"] for r in log[:2]) / 2
    last = sum(r["mse"] for r in log[-2:]) / 2
    assert last < 0.5 * first, (first, last)
    assert len(bank) == 2 and bank.step.tolist() == [60, 60]
    p = heldout_psnr(dec, bank.activated(), held, cfg)
    assert p.shape == (2,) and (p > 12).all(), p


def loop_setup(**kw):
    cfg = get_preset("smoke", n_samples=8, rays_per_scene=32, occ_grid_res=4, **kw)
    data = toy_scenes(n_views=3, res=8)
    bank = CodeBank(2, cfg.code_ch, cfg.code_res, generator=torch.Generator().manual_seed(0))
    bank.occupancy = OccupancyGrid.full(2, cfg.occ_grid_res)
    dec = TriplaneDecoder.from_config(cfg)
    return cfg, data, bank, dec, torch.optim.Adam(dec.parameters(), lr=cfg.lr_decoder)


def test_recipe_occupancy_schedule_and_probes(monkeypatch):
    """occ_every / occ_warmup pick the iterations, occ_jitter the probes, occ_first the
    moment (before the rendering steps: the decoder has not stepped yet)."""
    calls = []
    real = OccupancyGrid.refresh

    def spy(self, field, idx, threshold, n_jitter=4, *a, **k):
        calls.append((it, n_jitter, field.decoder.base.weight.detach().clone()))
        return real(self, field, idx, threshold, n_jitter, *a, **k)
    monkeypatch.setattr(OccupancyGrid, "refresh", spy)
    for first in (True, False):
        cfg, data, bank, dec, opt = loop_setup()
        recipe = Recipe(occ_every=3, occ_jitter=2, occ_first=first)
        idx, gen = torch.tensor([0, 1]), torch.Generator().manual_seed(0)
        calls.clear()
        for it in range(8):
            w_before = dec.base.weight.detach().clone()
            autodecoder_iteration(bank, idx, dec, opt, data, cfg, it, 2, recipe, occ_warmup=2,
                                  generator=gen)
            if calls and calls[-1][0] == it:
                seen = calls[-1][2]
                assert not torch.equal(w_before, dec.base.weight)          # psi stepped
                assert torch.equal(seen, w_before if first else dec.base.weight.detach())
        assert [c[0] for c in calls] == [3, 6] and all(c[1] == 2 for c in calls)


def test_recipe_regulariser_init_and_loss_scale(monkeypatch):
    cfg, data, bank, dec, opt = loop_setup()
    idx = torch.tensor([0, 1])
    x = code_activation(bank.get(idx).detach())
    rays = sample_rays(data, idx, cfg.rays_per_scene, torch.Generator().manual_seed(1))
    l2, tv = (rendering_loss(dec, x, *rays, cfg, 3, generator=torch.Generator().manual_seed(2),
                             reg=r) for r in ("l2", "tv"))
    torch.testing.assert_close(l2 - tv, cfg.code_reg * x.pow(2).flatten(1).mean(1)
                               - cfg.stage1_tv * tv_regulariser(x))
    # init="mean": a scene never stepped starts from the mean code; mean_loss: scale 1/B
    scales = []
    real = autodecoder.code_step
    monkeypatch.setattr(autodecoder, "code_step",
                        lambda *a, **k: scales.append(k["scale"]) or real(*a, **k))
    bank.step[1] = 5                                          # scene 1 was fitted before
    kept = bank.codes_[1].clone()
    mean = torch.full(bank.shape[1:], 0.5)
    recipe = Recipe(init="mean", mean_loss=True, occ_every=1)
    cfg_frozen = get_preset("smoke", n_samples=8, rays_per_scene=32, occ_grid_res=4, lr_code=1e-12)
    autodecoder_iteration(bank, idx, dec, None, data, cfg_frozen, 0, 1, recipe, mean_code=mean,
                          occ_warmup=10)
    torch.testing.assert_close(bank.activated(torch.tensor([0])), torch.full_like(x[:1], 0.5))
    torch.testing.assert_close(bank.codes_[1], kept)
    batch_mean = bank.activated(idx).mean(0)
    torch.testing.assert_close(mean, 0.5 * (1 - MEAN_CODE_MOMENTUM) + MEAN_CODE_MOMENTUM * batch_mean)
    autodecoder_iteration(bank, idx, dec, None, data, cfg_frozen, 1, 1, Recipe(occ_every=1),
                          occ_warmup=10)
    assert scales == [0.5, 1.0]


def test_train_autodecoder_takes_the_stage1_recipe():
    cfg, data, *_ = loop_setup()
    bank, *_ = train_autodecoder(cfg, data, 2, progress=False, recipe=STAGE1_RECIPE)
    ref, *_ = train_autodecoder(cfg, data, 2, progress=False)
    assert not torch.allclose(bank.codes_, ref.codes_)
    assert (bank.activated().abs().amax() > 1e-3)          # moved from the mean code, not U(+-1e-4)
