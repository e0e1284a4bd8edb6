"""Cameras: OpenCV look-at poses, pixel rays, ray/box intersection."""
import math

import torch

from minissd.data.cameras import (
    intrinsics,
    look_at,
    orbit_poses,
    pixel_rays,
    random_sphere_poses,
    ray_box,
    rays_at_pixels,
    spiral_poses,
)


def _dist_to_origin(o, d):
    """Distance from the origin to the line o + t d (unit d)."""
    return torch.linalg.cross(-o, d, dim=-1).norm(dim=-1)


def test_principal_ray_passes_through_origin():
    g = torch.Generator().manual_seed(0)
    poses = torch.cat([random_sphere_poses(20, 1.3, generator=g), spiral_poses(20),
                       orbit_poses(8), look_at(torch.tensor([[0.0, 0.0, 2.0]]))])
    K = intrinsics(64)
    uv = K[:2, 2].expand(len(poses), 2)                     # the principal point
    o, d = rays_at_pixels(poses, K, uv)
    assert _dist_to_origin(o, d).max() < 1e-5
    # forward means towards the origin, not away from it
    assert ((o * d).sum(-1) < 0).all()


def test_look_at_is_rigid_opencv():
    c2w = look_at(torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.0, 1.0]]))
    R = c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(2, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2), atol=1e-6)
    # camera y (down in the image) points against world up z
    assert (R[:, 2, 1] < 0).all()


def test_ray_box_hand_values():
    o = torch.tensor([[-3.0, 0, 0], [0, 0, 0], [0, 3.0, 0], [-2.0, -2.0, 0]])
    d = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0], [1.0, 1.0, 0]])
    d = d / d.norm(dim=-1, keepdim=True)
    near, far, hit = ray_box(o, d, bound=1.0, near_min=0.2)
    assert hit.tolist() == [True, True, False, True]
    s2 = math.sqrt(2)
    assert torch.allclose(near, torch.tensor([2.0, 0.2, 0.2, s2]), atol=1e-5)
    assert torch.allclose(far, torch.tensor([4.0, 1.0, 0.2, 3 * s2]), atol=1e-5)


def test_pixel_rays_agree_with_rays_at_pixels():
    g = torch.Generator().manual_seed(1)
    c2w = random_sphere_poses(3, 1.3, generator=g)
    K = intrinsics(8)
    o, d = pixel_rays(c2w, K, 8, 6)                           # (3, 8, 6, 3)
    assert o.shape == d.shape == (3, 8, 6, 3)
    v, y, x = torch.meshgrid(torch.arange(3), torch.arange(8), torch.arange(6), indexing="ij")
    uv = torch.stack([x, y], -1).reshape(-1, 2).float() + 0.5
    o2, d2 = rays_at_pixels(c2w[v.reshape(-1)], K, uv)
    assert torch.allclose(o.reshape(-1, 3), o2, atol=1e-6)
    assert torch.allclose(d.reshape(-1, 3), d2, atol=1e-6)
    assert torch.allclose(d.norm(dim=-1), torch.ones(3, 8, 6), atol=1e-6)


def test_intrinsics_match_srn_cars():
    K = intrinsics(128)
    assert abs(K[0, 0].item() - 131.25) < 0.1 and K[0, 2].item() == 64.0


def test_pose_helpers_default_to_minissd_units():
    """The orbit/spiral/sphere helpers default to the training cameras' distance in
    minissd units (SRN's 1.3 raw units divided by the loader's scale), not raw units."""
    from minissd.data import cameras, procedural, srn
    expected = procedural.RADIUS / srn.SCALE                  # what the loader turns 1.3 into
    assert abs(cameras.CAMERA_RADIUS - expected) < 1e-6
    for poses in (orbit_poses(3), spiral_poses(3), random_sphere_poses(3)):
        assert torch.allclose(poses[:, :3, 3].norm(dim=-1), torch.full((3,), expected), atol=1e-5)
