"""Unposed reconstruction (minissd/related/pose.py): SO(3), the camera's gradient, pose
recovery on a fitted training scene, and the `evaluate --task pose` command line."""
import glob
import math
import os

import pytest
import torch

from minissd.data.cameras import look_at, rays_at_pixels, sphere_to_xyz
from minissd.nerf.render import render_image, render_rays
from minissd.related import pose
from minissd.related.codenerf import load_any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_so3_exp_matches_closed_form_and_is_a_rotation():
    t = 0.7
    Rz = torch.tensor([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1.0]])
    assert torch.allclose(pose.so3_exp(torch.tensor([0, 0, t])), Rz, atol=1e-6)
    w = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 2
    R = pose.so3_exp(w)
    assert torch.allclose(R, torch.linalg.matrix_exp(pose.hat(w)), atol=1e-5)
    assert torch.allclose(R.transpose(-1, -2) @ R, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64), atol=1e-5)
    small = torch.tensor([1e-5, -2e-5, 3e-5])               # the Taylor branch
    assert torch.allclose(pose.so3_exp(small), torch.eye(3) + pose.hat(small), atol=1e-9)
    # the rotation error of exp(w) R against R is |w| in degrees
    assert abs(float(pose.rotation_error_deg(pose.so3_exp(torch.tensor([0.1, 0, 0])) @ Rz, Rz))
               - math.degrees(0.1)) < 1e-3


def _blob(xyz, dirs):
    """A smooth analytic field: a Gaussian density blob, colour varying with position."""
    r2 = (xyz - torch.tensor([0.2, -0.1, 0.1])).pow(2).sum(-1)
    return 8 * torch.exp(-4 * r2), torch.sigmoid(2 * xyz)


def test_gradient_reaches_the_pose_finite_differences():
    c2w0 = look_at(sphere_to_xyz(2.6, 0.3, 0.4))
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    uv = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="xy"), -1).reshape(-1, 2) + 0.5
    target = torch.rand(len(uv), 3, generator=torch.Generator().manual_seed(1))

    def loss(p):
        o, d = rays_at_pixels(pose.camera(c2w0.double(), p).expand(len(uv), 4, 4), K.double(), uv.double())
        out = render_rays(_blob, o[None], d[None], 64)
        return (out["rgb"][0] - target.double()).pow(2).mean()

    p = torch.tensor([0.05, -0.03, 0.02, 0.01, 0.02, -0.01, 0.03], dtype=torch.float64, requires_grad=True)
    g, = torch.autograd.grad(loss(p), p)
    assert g.abs().min() > 1e-6                               # every parameter moves the image
    eps = 1e-5
    fd = torch.stack([(loss(p.detach() + eps * e) - loss(p.detach() - eps * e)) / (2 * eps)
                      for e in torch.eye(7, dtype=torch.float64)])
    assert torch.allclose(g, fd, rtol=1e-3, atol=1e-7), (g, fd)


def test_small_pose_perturbation_of_a_training_scene_is_recovered():
    """The shipped smoke SSDNeRF's own training code, rendered from a known camera, seen
    from a camera turned by about 8 degrees: pose steps bring it back within 2 degrees."""
    path = sorted(glob.glob(os.path.join(ROOT, "assets", "models", "cars-single-stage-smoke-allv-*.pt")))[0]
    model = load_any(path)
    res = 32
    c2w_gt = look_at(sphere_to_xyz(2.6, 0.8, 0.45))
    K = torch.tensor([[res * 1.0, 0, res / 2], [0, res * 1.0, res / 2], [0, 0, 1]])
    field = model.field(model.codes[:1])
    image = render_image(field, c2w_gt[None], K, res, res, model.cfg.n_samples)["rgb"][0]
    c2w0 = pose.camera(c2w_gt, torch.tensor([0.06, -0.08, 0.09, 0.03, 0.0, 0.0, 0.0]))
    start_err = pose.pose_errors(c2w0, c2w_gt)[0]
    assert start_err > 7
    p = torch.zeros(7, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1.5e-2)
    pcfg = pose.PoseConfig(rays=256)
    gen = torch.Generator().manual_seed(0)
    for step in range(80):
        pose.pose_step(field, opt, step, c2w0, p, K, image, pcfg, model.cfg.n_samples, generator=gen)
    rot, trans = pose.pose_errors(pose.camera(c2w0, p).detach(), c2w_gt)
    assert rot < 2.0, (start_err, rot)
    assert trans < 0.03


def test_starts_include_the_front_back_flip_of_every_grid_start():
    pcfg = pose.PoseConfig(starts=2)
    cams = pose.sphere_grid(pcfg)
    starts = pose.pick_starts(cams, torch.arange(len(cams), dtype=torch.float32), pcfg)
    assert len(starts) == 4                                   # two grid cameras, each with its flip
    for k in (0, 2):
        assert abs(float(pose.rotation_error_deg(starts[k + 1, :3, :3], starts[k, :3, :3])) - 180) < 0.1
        assert torch.allclose(starts[k + 1, 2, 3], starts[k, 2, 3])   # same height, opposite side
    assert float(pose.rotation_error_deg(starts[0, :3, :3], starts[2, :3, :3])) >= pcfg.min_sep


def test_a_grid_camera_near_an_earlier_flip_is_skipped_the_exact_flip_kept():
    """Grid ranked so that the second-best camera lies near the flip of the best: the start
    list keeps the EXACT flip and skips that grid camera (a worse stand-in for the flip)."""
    pcfg = pose.PoseConfig(starts=2)
    cams = pose.sphere_grid(pcfg)
    near = [i for i in range(1, len(cams)) if 5 < float(
        pose.rotation_error_deg(cams[i, :3, :3], pose.flip(cams[0])[:3, :3])) < pcfg.min_sep]
    j = near[0]
    order = [0, j] + [i for i in range(len(cams)) if i not in (0, j)]
    starts = pose.pick_starts(cams[order], torch.arange(len(cams), dtype=torch.float32), pcfg)
    assert len(starts) == 4
    assert torch.allclose(starts[1], pose.flip(cams[0]), atol=1e-6)
    assert not any(torch.allclose(s, cams[j], atol=1e-4) for s in starts)
    for a in range(4):
        for b in range(a + 1, 4):
            assert float(pose.rotation_error_deg(starts[a, :3, :3], starts[b, :3, :3])) >= pcfg.min_sep


def test_camera_only_probe_keeps_the_code_and_scores_the_whole_image():
    """A probe moves only the camera (the code and the network do not change) and its score
    is the deterministic full-image loss at its final camera; a start on the right side
    scores lower than its flip."""
    path = sorted(glob.glob(os.path.join(ROOT, "assets", "models", "cars-single-stage-smoke-allv-*.pt")))[0]
    model = load_any(path)
    res = 16
    c2w_gt = look_at(sphere_to_xyz(2.6, 0.8, 0.45))
    K = torch.tensor([[res * 1.0, 0, res / 2], [0, res * 1.0, res / 2], [0, 0, 1]])
    code = model.codes[:1].clone()
    field = model.field(code)
    image = render_image(field, c2w_gt[None], K, res, res, model.cfg.n_samples)["rgb"][0]
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    pcfg = pose.PoseConfig(probe_steps=5, rays=64)
    start = pose.camera(c2w_gt, torch.tensor([0.05, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0]))
    right = pose.probe(field, start, K, image, pcfg, model.cfg.n_samples,
                       generator=torch.Generator().manual_seed(0))
    wrong = pose.probe(field, pose.flip(start), K, image, pcfg, model.cfg.n_samples,
                       generator=torch.Generator().manual_seed(0))
    assert len(right["history"]) == 5 and not torch.equal(right["c2w"], start)
    assert torch.equal(code, model.codes[:1])
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in before.items())
    assert right["score"] == pytest.approx(pose.image_loss(field, right["c2w"], K, image, model.cfg.n_samples))
    assert right["score"] < wrong["score"]


@pytest.mark.parametrize("bad", ["notamodel", "views"])
def test_evaluate_pose_rejects_input_it_cannot_use(bad, made, tmp_path, capsys):
    from minissd.cli import main
    ckpt = tmp_path / "m.pt"
    if bad == "notamodel":
        ckpt.write_bytes(b"not a checkpoint")
        extra = []
    else:
        ckpt = sorted(glob.glob(os.path.join(ROOT, "assets", "models", "cars-single-stage-smoke-allv-*.pt")))[0]
        extra = ["--input-views", "64", "104"]
    rc = main(["evaluate", "--task", "pose", "--ckpt", str(ckpt), "--data", made,
               "--json", str(tmp_path / "o.json"), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert (str(ckpt) if bad == "notamodel" else "--input-views") in err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("bad", ["joint ", "both", 1])
def test_probe_mode_is_validated_with_a_one_line_error_naming_it(bad):
    for ok in (None, "camera", "joint"):
        assert pose.PoseConfig(probe=ok).probe == ok
    with pytest.raises(ValueError) as e:
        pose.PoseConfig(probe=bad)
    msg = str(e.value)
    assert repr(bad) in msg and "camera" in msg and "joint" in msg and len(msg.splitlines()) == 1


def _tiny_unposed(kind, probe):
    """The shipped smoke model of `kind` run unposed on a 16 px rendering of its training
    object 0, with a tiny search (1 grid camera + its flip, 3 probe steps, 5 steps)."""
    name = "codenerf" if kind == "codenerf" else "single-stage"
    path = sorted(glob.glob(os.path.join(ROOT, "assets", "models", f"cars-{name}-smoke-allv-*.pt")))[0]
    model = load_any(path)
    res = 16
    K = torch.tensor([[res * 1.0, 0, res / 2], [0, res * 1.0, res / 2], [0, 0, 1]])
    code = model.codes[:1]
    image = render_image(model.field(code), look_at(sphere_to_xyz(2.6, 0.8, 0.45))[None], K, res, res,
                         model.cfg.n_samples)["rgb"][0].detach()
    pcfg = pose.PoseConfig(n_azimuth=4, elevations=(30.0,), grid_res=8, starts=1, probe_steps=3,
                           steps=5, rays=32, probe=probe)
    calls = []
    out = pose.unposed(model, image, K, pcfg, generator=torch.Generator().manual_seed(0),
                       callback=lambda step, c2w, c, loss: calls.append((step, c2w, None if c is None else c.clone())))
    return model, image, K, pcfg, out, calls


def test_default_probe_mode_depends_on_the_model_kind():
    assert pose.probe_mode(pose.PoseConfig(), "codenerf") == pose.DEFAULT_PROBE["codenerf"] == "joint"
    assert pose.probe_mode(pose.PoseConfig(), "ssdnerf") == pose.DEFAULT_PROBE["ssdnerf"] == "camera"
    assert pose.probe_mode(pose.PoseConfig(probe="camera"), "codenerf") == "camera"
    for kind in ("codenerf", "ssdnerf"):
        *_, out, calls = _tiny_unposed(kind, None)
        assert out["probe"] == pose.DEFAULT_PROBE[kind]
        probing = [c for _, _, c in calls[:2 * 3]]          # 2 starts x 3 probe steps
        assert all((c is None) == (out["probe"] == "camera") for c in probing)


def test_joint_probes_move_the_code_and_are_scored_with_it():
    model, image, K, pcfg, out, calls = _tiny_unposed("codenerf", "joint")
    mean = model.mean_code()
    assert out["probe"] == "joint" and len(calls) == 2 * 3 + 2 and len(out["history"]) == pcfg.steps
    probe_codes = [c for _, _, c in calls[:6]]
    assert all(c is not None and not torch.allclose(c, mean) for c in probe_codes)
    assert not torch.allclose(probe_codes[2], probe_codes[5])  # each start its own code
    # each probe is scored with ITS code at its final camera (not with the mean code)
    for j in range(2):
        c2w, codes = calls[3 * j + 2][1], calls[3 * j + 2][2]
        assert torch.allclose(out["probe_c2w"][j], c2w)
        assert out["probe_losses"][j] == pytest.approx(
            pose.image_loss(model.field(codes), c2w, K, image, model.cfg.n_samples))
    # the kept probe goes on: the refinement's steps are numbered after the probe's
    assert [s for s, _, _ in calls[6:]] == [3, 4]
    assert torch.allclose(out["history"][2], out["probe_c2w"][out["kept"]])
