"""Single-stage training (Algorithm 1), the two-stage baseline, and checkpoints."""
import os

import pytest
import torch

from minissd.config import get_preset
from minissd.data.cameras import intrinsics, orbit_poses
from minissd.nerf import autodecoder
from minissd.nerf.autodecoder import (SINGLE_STAGE_RECIPE, STAGE1_RECIPE, rendering_loss,
                                      sample_rays)
from minissd.nerf.occupancy import OccupancyGrid
from minissd.nerf.triplane import code_activation, planes_to_image
from minissd.ssd import checkpoint as ckpt
from minissd.ssd.train import Trainer, sparse_view_ids


def tiny_data(n_scenes=4, n_views=3, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.rand(n_scenes, n_views, res, res, 3, generator=g),
            "c2w": orbit_poses(n_views, radius=2.6).expand(n_scenes, -1, -1, -1).clone(),
            "K": intrinsics(res).expand(n_scenes, n_views, 3, 3).clone(),
            "names": [f"s{i}" for i in range(n_scenes)]}


def tiny_cfg(**kw):
    base = dict(image_res=16, scenes_per_batch=2, rays_per_scene=32, n_samples=8,
                iters=4, ckpt_every=2, warmup=1)
    base.update(kw)
    return get_preset("smoke", **base)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_sparse_view_ids_match_paper():
    assert sparse_view_ids(50, 3) == [0, 24, 49]              # the paper's 3 views of 50
    assert sparse_view_ids(50, 0) == list(range(50))
    assert len(set(sparse_view_ids(50, 7))) == 7


def test_kin1_cached_update_equals_summed_loss_update():
    """With K_in = 1, Algorithm 1 is exactly one Adam step on the gradient of eq. (4)."""
    cfg = tiny_cfg(k_in_schedule=((0, 1),), diff_steps=1)      # Algorithm 1 exactly
    a, b = Trainer(cfg, tiny_data()), Trainer(cfg, tiny_data())
    assert torch.equal(a.bank.codes_, b.bank.codes_)
    init = a.bank.codes_.clone()
    a.outer_step()
    # the same iteration by hand: one backward through the summed loss (same RNG draws)
    b.set_learning_rates()
    idx = b.sample_scenes()
    code_ = b.bank.codes_[idx].clone().requires_grad_(True)
    x = code_activation(code_)
    lam = b.prior.lambda_diff(cfg.c_diff)
    total = lam * b.prior.loss(planes_to_image(x), generator=b.gen).mean()
    o, d, target = sample_rays(b.data, idx, cfg.rays_per_scene, b.gen)
    total = total + rendering_loss(b.decoder, x, o, d, target, cfg, b.n_views,
                                   generator=b.gen).mean()
    g = torch.autograd.grad(total, code_)[0]
    b.bank.adam_step(idx, g, cfg.lr_code)
    assert not torch.equal(a.bank.codes_, init)         # the step did move the codes
    torch.testing.assert_close(a.bank.codes_, b.bank.codes_, rtol=1e-5, atol=1e-7)


def test_kin_gt1_runs_denoiser_once_and_reuses_prior_grad(monkeypatch):
    cfg = tiny_cfg(k_in_schedule=((0, 4),), diff_steps=1)
    tr = Trainer(cfg, tiny_data())
    calls = {"unet": 0}
    orig = tr.prior.unet.forward

    def counting(*args, **kw):
        calls["unet"] += 1
        return orig(*args, **kw)
    monkeypatch.setattr(tr.prior.unet, "forward", counting)
    seen = []
    orig_step = autodecoder.inner_step          # the one auto-decoder loop's inner step

    def recording(*args, prior_grad, step_decoder, **kw):
        seen.append((prior_grad.clone(), step_decoder))
        return orig_step(*args, prior_grad=prior_grad, step_decoder=step_decoder, **kw)
    monkeypatch.setattr(autodecoder, "inner_step", recording)
    for _ in range(2):
        tr.outer_step()
    assert calls["unet"] == 2, "the denoiser must run once per outer iteration"
    assert len(seen) == 8
    for outer in (seen[:4], seen[4:]):
        assert all(torch.equal(outer[0][0], g) for g, _ in outer), "prior grad must be reused unchanged"
        assert [s for _, s in outer] == [False, False, False, True], "decoder steps on the last inner step"
    assert not torch.equal(seen[0][0], seen[4][0])


def test_two_stage_stage2_freezes_codes_and_decoder():
    cfg = tiny_cfg(iters=3)
    tr = Trainer(cfg, tiny_data(), mode="two-stage")
    prior0 = params(tr.prior)
    for _ in range(3):
        assert tr.phase() == "stage1"
        tr.outer_step()
    assert all(torch.equal(p, q) for p, q in zip(prior0, params(tr.prior))), "stage 1 must not train phi"
    codes, dec = tr.bank.codes_.clone(), params(tr.decoder)
    for _ in range(3):
        assert tr.phase() == "stage2"
        tr.outer_step()
    assert torch.equal(codes, tr.bank.codes_)
    assert all(torch.equal(p, q) for p, q in zip(dec, params(tr.decoder)))
    assert not all(torch.equal(p, q) for p, q in zip(prior0, params(tr.prior)))


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    cfg = tiny_cfg(iters=4, ckpt_every=2)
    full = Trainer(cfg, tiny_data(), out_dir=str(tmp_path / "full"))
    full.train(progress=False)
    killed = Trainer(cfg, tiny_data(), out_dir=str(tmp_path / "run"))
    killed.train(progress=False, stop_after=2)          # "killed" after the checkpoint at 2
    del killed
    resumed = Trainer(cfg, tiny_data(), out_dir=str(tmp_path / "run"))
    assert resumed.resume() and resumed.it == 2
    resumed.train(progress=False)
    assert resumed.it == full.it == 4
    assert torch.equal(resumed.bank.codes_, full.bank.codes_)
    for m in ("decoder", "prior", "ema_prior"):
        for p, q in zip(getattr(resumed, m).state_dict().values(), getattr(full, m).state_dict().values()):
            assert torch.equal(p, q), m
    assert [r["loss_rend"] for r in resumed.log] == [r["loss_rend"] for r in full.log]
    assert not [f for f in os.listdir(tmp_path / "run") if f.startswith(".tmp")]


def test_corrupted_checkpoint_clear_error_and_untouched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    bad = run / "checkpoint.pt"
    bad.write_bytes(b"this is not a checkpoint")
    tr = Trainer(tiny_cfg(), tiny_data(), out_dir=str(run))
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.pt"):
        tr.resume()
    assert bad.read_bytes() == b"this is not a checkpoint"


def test_mismatched_config_clear_error_and_untouched(tmp_path):
    tr = Trainer(tiny_cfg(), tiny_data(), out_dir=str(tmp_path))
    tr.train(progress=False, stop_after=1)
    tr.save()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    other = Trainer(tiny_cfg(lr_code=0.5), tiny_data(), out_dir=str(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="lr_code"):
        other.resume()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # iters may change between a run and its resumption
    longer = Trainer(tiny_cfg(iters=6), tiny_data(), out_dir=str(tmp_path))
    assert longer.resume() and longer.it == 1


def test_single_stage_smoke_lowers_rendering_loss():
    cfg = tiny_cfg(iters=80, k_in_schedule=((0, 2),))
    data = tiny_data(n_scenes=2, n_views=2)
    data["images"][:] = 1.0                             # an empty white scene...
    data["images"][:, :, 5:11, 5:11] = torch.tensor([0.8, 0.2, 0.1])  # ...with a red block
    tr = Trainer(cfg, data)
    log = tr.train(progress=False)
    first = sum(r["loss_rend"] for r in log[:10]) / 10
    last = sum(r["loss_rend"] for r in log[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    assert all(r["loss_diff"] == r["loss_diff"] for r in log), "diffusion loss is NaN"


def test_extra_denoiser_steps_train_phi_only_and_match_two_stage(monkeypatch):
    """cfg.diff_steps: one Algorithm-1 denoiser pass whose gradient reaches the codes, plus
    diff_steps - 1 denoiser-only updates; stage 2 of the baseline gets the same count."""
    cfg = tiny_cfg(k_in_schedule=((0, 1),), diff_steps=3, diff_batch=3, iters=2)
    tr = Trainer(cfg, tiny_data())
    seen = []
    orig = autodecoder.inner_step

    def recording(*args, prior_grad, **kw):
        seen.append(None if prior_grad is None else prior_grad.clone())
        return orig(*args, prior_grad=prior_grad, **kw)
    monkeypatch.setattr(autodecoder, "inner_step", recording)
    steps = {"n": 0}
    orig_opt = tr.opt_prior.step

    def counting(*a, **k):
        steps["n"] += 1
        return orig_opt(*a, **k)
    monkeypatch.setattr(tr.opt_prior, "step", counting)
    g_first = {}
    orig_grad = tr.diffusion_grad

    def first_grad(idx, *a, **k):
        out = orig_grad(idx, *a, **k)
        g_first.setdefault(tr.it, out[0])
        return out
    monkeypatch.setattr(tr, "diffusion_grad", first_grad)
    tr.outer_step()
    assert steps["n"] == 3, "diff_steps denoiser updates per outer iteration"
    assert torch.equal(seen[0], g_first[0]), "the codes get the first (Algorithm 1) prior gradient"
    two = Trainer(cfg, tiny_data(), mode="two-stage")
    n = {"n": 0}
    orig2 = two.opt_prior.step
    monkeypatch.setattr(two.opt_prior, "step", lambda *a, **k: (n.__setitem__("n", n["n"] + 1), orig2(*a, **k)))
    for _ in range(2 * cfg.iters):
        two.outer_step()
    assert n["n"] == cfg.iters * cfg.diff_steps, "stage 2 gets the same denoiser updates"


def test_decoder_steps_only_on_the_last_inner_step():
    cfg = tiny_cfg(k_in_schedule=((0, 3),))
    tr = Trainer(cfg, tiny_data())
    idx = tr.sample_scenes()
    before = params(tr.decoder)
    tr.rendering_step(idx, None, step_decoder=False)
    assert all(torch.equal(p, q) for p, q in zip(before, params(tr.decoder))), "decoder moved"
    tr.rendering_step(idx, None, step_decoder=True)
    assert not all(torch.equal(p, q) for p, q in zip(before, params(tr.decoder)))


def test_two_stage_stage1_uses_tv_and_mean_init():
    from minissd.nerf.autodecoder import tv_regulariser
    x = torch.zeros(1, 3, 2, 4, 4)
    assert float(tv_regulariser(x)) < 1e-6
    x[..., 1, 1] = 1.0        # a bump in every plane: |(dx, dy)| is 1 at texels (1,0) and (0,1),
    ref = (2 + 2 ** 0.75) / 16   # sqrt(2) at the bump itself; ^1.5, mean over the 16 texels
    assert abs(float(tv_regulariser(x)) - ref) < 1e-5
    cfg = tiny_cfg(iters=2)
    tr = Trainer(cfg, tiny_data(), mode="two-stage")
    assert tr.recipe == STAGE1_RECIPE and Trainer(cfg, tiny_data()).recipe == SINGLE_STAGE_RECIPE
    assert (STAGE1_RECIPE.reg, STAGE1_RECIPE.init, STAGE1_RECIPE.occ_every) == ("tv", "mean", 1)
    tr.mean_code.fill_(0.5)
    before = tr.bank.codes_.clone()
    row = tr.outer_step()               # stage 1: the batch starts from the mean code, then steps
    idx = (tr.bank.step > 0).nonzero().flatten()
    assert row["phase"] == "stage1" and len(idx) == cfg.scenes_per_batch
    moved = (tr.bank.activated(idx) - 0.5).abs().amax()
    assert 0 < moved < 0.2, moved       # near 0.5 (lr_code x K_in away), not near the 1e-4 start
    untouched = (tr.bank.step == 0).nonzero().flatten()
    assert torch.equal(tr.bank.codes_[untouched], before[untouched])


def test_trainer_occupancy_has_one_owner():
    tr = Trainer(tiny_cfg(), tiny_data())
    assert tr.occupancy is tr.bank.occupancy and len(tr.occupancy) == tr.n_scenes
    tr.occupancy = OccupancyGrid.full(tr.n_scenes, 4)      # what resuming from a checkpoint does
    assert tr.bank.occupancy.res == 4


def test_x0_ema_takes_one_batch_per_outer_iteration():
    """lambda_diff's EMA of mean(x0^2) is updated once per outer iteration, also with
    diff_steps > 1 and in stage 2, on codes where mean(x0)^2 (0.36) != mean(x0^2) (0.52)."""
    cfg = tiny_cfg(diff_steps=3, diff_batch=3, iters=1, x0_ema_momentum=0.1)
    m = cfg.x0_ema_momentum
    for mode in ("single-stage", "two-stage"):
        tr = Trainer(cfg, tiny_data(), mode=mode)
        if mode == "two-stage":
            tr.outer_step()                                         # stage 1 (no EMA update)
            assert float(tr.prior.x0_sq_ema) == 1.0
        x = torch.full(tr.bank.shape[1:], 0.2)
        x[..., ::2] = 1.0                                           # every scene: x in {0.2, 1.0}
        tr.bank.set_activated(torch.arange(tr.n_scenes), x[None])
        sq = tr.bank.activated().pow(2).mean().item()
        assert abs(sq - 0.52) < 1e-5
        row = tr.outer_step()
        assert row["phase"] == ("single-stage" if mode == "single-stage" else "stage2")
        assert abs(row["lambda_diff"] - cfg.c_diff / row["x0_sq_ema"]) < 1e-9
        assert abs(row["x0_sq_ema"] - ((1 - m) + m * sq)) < 1e-6, (mode, row["x0_sq_ema"])
