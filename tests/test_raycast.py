"""Exact ray casting: closed-form hits, normals, anti-aliasing, surface samples."""
import math

import torch

from minissd.data import procedural as P
from minissd.data import raycast as R
from minissd.data.cameras import intrinsics, look_at, pixel_rays, spiral_poses


def test_ray_hits_against_hand_values():
    p = R.Parts()
    p.box((0, 0, 0), (0.2, 0.2, 0.2), (1, 0, 0))
    p.cyl((0, 0.5, 0), 0.1, 0.3, (0, 1, 0), axis=2)
    p.sphere((0, -0.5, 0), 0.1, (0, 0, 1))
    o = torch.tensor([[2.0, 0, 0], [2.0, 0.5, 0], [2.0, -0.5, 0], [0, 0.5, 2.0], [2.0, 0, 1.0]])
    d = torch.tensor([[-1.0, 0, 0], [-1.0, 0, 0], [-1.0, 0, 0], [0, 0, -1.0], [-1.0, 0, 0]])
    t, idx = R.intersect(p.tensors(), o, d)
    assert torch.allclose(t[:4], torch.tensor([1.8, 1.9, 1.9, 1.7]), atol=1e-5)
    assert idx[:4].tolist() == [0, 1, 2, 1] and math.isinf(t[4])
    n = R.normals(p.tensors(), o[:4] + t[:4, None] * d[:4], idx[:4])
    assert torch.allclose(n, torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-5)


def test_surface_points_are_on_the_visible_surface():
    parts = P.make_object("chairs", 2)
    pts, _ = R.sample_surface(parts, 1000, torch.Generator().manual_seed(0))
    eye = torch.tensor([1.3, 0.3, 0.6]).expand(len(pts), 3)
    d = pts - eye
    dist = d.norm(dim=-1)
    t, _ = R.intersect(parts.tensors(), eye, d / dist[:, None])
    assert (t <= dist + 1e-3).float().mean() > 0.995        # nothing lies behind empty space
    assert ((t - dist).abs() < 1e-4).float().mean() > 0.2   # many are seen directly


def test_antialiasing_matches_full_supersampling():
    p = R.Parts()
    p.box((0, 0, 0), (0.3, 0.2, 0.25), (0.8, 0.2, 0.1))
    p.sphere((0, 0, 0.35), 0.15, (0.1, 0.3, 0.9))
    c2w, K = look_at(torch.tensor([[1.1, 0.6, 0.5]])), intrinsics(16)
    adaptive = R.render(p, c2w, K, 16, 16, ss=3)
    # brute force: every pixel as the mean of 3x3 sub-pixel rays
    Kf = K.clone()
    Kf[:2] *= 3
    o, d = pixel_rays(c2w, Kf, 48, 48)
    full = R.trace(p.tensors(), o.reshape(-1, 3), d.reshape(-1, 3)).reshape(1, 16, 3, 16, 3, 3).mean((2, 4))
    assert (adaptive - full).abs().max() < 0.03
    assert ((adaptive > 0.01) & (adaptive < 0.99)).any()     # some pixels are partly covered
    aliased = R.render(p, c2w, K, 16, 16, ss=1)
    assert (aliased - full).abs().mean() > (adaptive - full).abs().mean()


def test_parts_extents_and_normalize():
    p = R.Parts()
    p.box((1, 0, 0), (0.5, 0.1, 0.2), (1, 1, 1))
    p.cyl((0, 0, 0), 0.2, 0.4, (1, 1, 1), axis=0)
    p.sphere((0, 1, 0), 0.3, (1, 1, 1))
    _, _, ext, _, _ = p.tensors()
    assert torch.allclose(ext, torch.tensor([[0.5, 0.1, 0.2], [0.4, 0.2, 0.2], [0.3, 0.3, 0.3]]))
    p.normalize(0.45)
    kind, c, ext, size, _ = p.tensors()
    lo, hi = (c - ext).amin(0), (c + ext).amax(0)
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-6)
    # this box is long and flat: the half-diagonal cap binds (0.56), not the half side
    assert abs((hi - lo).norm().item() / 2 - 0.56) < 1e-5 and (hi - lo).max().item() / 2 < 0.45 - 1e-3
    assert size[1, 2] == 0                                     # the axis id is not scaled
    q = R.Parts()                                              # a compact box: the half side binds
    q.box((1, 0, 0), (0.5, 0.1, 0.2), (1, 1, 1))
    _, c, ext, _, _ = q.normalize(0.45).tensors()
    lo, hi = (c - ext).amin(0), (c + ext).amax(0)
    assert abs((hi - lo).max().item() / 2 - 0.45) < 1e-5 and (hi - lo).norm().item() / 2 < 0.56


def test_render_deterministic_and_objects_differ():
    K, c2w = intrinsics(32), spiral_poses(2, P.RADIUS)
    a = R.render(P.make_object("chairs", 5), c2w, K, 32, 32)
    b = R.render(P.make_object("chairs", 5), c2w, K, 32, 32)
    c = R.render(P.make_object("chairs", 6), c2w, K, 32, 32)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 1e-3
