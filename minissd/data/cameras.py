"""Cameras: pixel rays, ray/box intersection, orbit / spiral / sphere poses, and which
views of a test spiral are the inputs (the SRN protocol's view 64, 64 and 104, ...).

Conventions (the SRN data's, as the official lib/datasets/shapenet_srn.py reads them):
  * `c2w` is a 4x4 camera-to-world matrix in the OpenCV convention: camera x right,
    y down, z forward (the camera looks along its +z axis).
  * `K` is the 3x3 pinhole intrinsics [[f, 0, cx], [0, f, cy], [0, 0, 1]] in pixels.
  * The ray of pixel (u, v) passes through its centre (u + 0.5, v + 0.5):
        d_cam = ((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1),   d_world = R d_cam
    and starts at the camera centre o = c2w[:3, 3]. Directions are unit length.
  * Scenes live in the box [-1, 1]^3 after the loader's scale normalisation: raw SRN
    coordinates are divided by SRN_SCALE, so SRN cars' cameras at 1.3 raw units sit at
    CAMERA_RADIUS = 2.6 inside minissd. The pose helpers below default to minissd units;
    dataset writers (procedural.py, pybullet_source.py) pass SRN_CAMERA_RADIUS explicitly.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

from minissd.utils import evenly_spaced

SRN_SCALE = 0.5                                  # raw SRN units per minissd unit
SRN_CAMERA_RADIUS = 1.3                          # SRN cars' camera distance, raw units (on disk)
CAMERA_RADIUS = SRN_CAMERA_RADIUS / SRN_SCALE    # 2.6: the same cameras in minissd units
PAPER_N_VIEWS = 251                              # views on an SRN test object's spiral
# the paper's fixed input views (official configs ssdnerf_cars_recons1v.py and
# multiview_recons/ssdnerf_cars_recons2v.py: `specific_observation_idcs`)
PAPER_INPUT_VIEWS = {1: (64,), 2: (64, 104)}


def pixel_rays(c2w: torch.Tensor, K: torch.Tensor, H: int, W: int):
    """Rays through every pixel centre.

    c2w: (..., 4, 4), K: (..., 3, 3) (broadcast against c2w).
    Returns origins, dirs: (..., H, W, 3), dirs unit length.
    """
    dev, dt = c2w.device, c2w.dtype
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=dt) + 0.5,
                          torch.arange(W, device=dev, dtype=dt) + 0.5, indexing="ij")
    K = K.to(dt)
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    cx, cy = K[..., 0, 2], K[..., 1, 2]
    e = (...,) + (None, None)                      # broadcast intrinsics over (H, W)
    d_cam = torch.stack(torch.broadcast_tensors(
        (u - cx[e]) / fx[e], (v - cy[e]) / fy[e], torch.ones_like(u)), dim=-1)
    R = c2w[..., :3, :3]                           # (..., 3, 3)
    dirs = torch.einsum("...ij,...hwj->...hwi", R, d_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[..., None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def rays_at_pixels(c2w: torch.Tensor, K: torch.Tensor, uv: torch.Tensor):
    """Rays through given pixel coordinates (continuous, e.g. u + 0.5 for a centre).

    c2w: (N, 4, 4), K: (N, 3, 3) or (3, 3), uv: (N, 2) -> origins, dirs (N, 3).
    Used to draw random training rays without building whole images of rays.
    """
    if K.dim() == 2:
        K = K.expand(uv.shape[0], 3, 3)
    d_cam = torch.stack([(uv[:, 0] - K[:, 0, 2]) / K[:, 0, 0],
                         (uv[:, 1] - K[:, 1, 2]) / K[:, 1, 1],
                         torch.ones_like(uv[:, 0])], dim=-1)
    dirs = torch.einsum("nij,nj->ni", c2w[:, :3, :3], d_cam)
    return c2w[:, :3, 3], dirs / dirs.norm(dim=-1, keepdim=True)


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, bound: float = 1.0,
            near_min: float = 0.0):
    """Slab test against the box [-bound, bound]^3.

    origins, dirs: (..., 3) -> near, far: (...,), hit: (...,) bool.
    near is clamped to >= near_min; where the ray misses, near = far = near_min.
    """
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=near_min)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    near = torch.where(hit, near, torch.full_like(near, near_min))
    far = torch.where(hit, far, near)
    return near, far, hit


def look_at(eye: torch.Tensor, target=None, up=None) -> torch.Tensor:
    """OpenCV camera-to-world matrices for cameras at `eye` (..., 3) looking at `target`.

    World up is +z by default; the camera's y axis points down in the image.
    """
    eye = torch.as_tensor(eye, dtype=torch.float32)
    target = torch.zeros_like(eye) if target is None else torch.as_tensor(target).to(eye).expand_as(eye)
    up = torch.tensor([0.0, 0.0, 1.0]) if up is None else torch.as_tensor(up, dtype=torch.float32)
    z = target - eye                                  # forward
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.cross(z, up.expand_as(z), dim=-1)       # right
    # a camera straight above/below: any right vector will do
    bad = x.norm(dim=-1, keepdim=True) < 1e-6
    x = torch.where(bad, torch.tensor([1.0, 0.0, 0.0]).expand_as(x), x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)                      # down
    c2w = torch.zeros(eye.shape[:-1] + (4, 4))
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2] = x, y, z
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def sphere_to_xyz(radius, azimuth, elevation) -> torch.Tensor:
    """Points on a sphere (z up); angles in radians. Broadcasts; returns (..., 3)."""
    azimuth, elevation = torch.as_tensor(azimuth, dtype=torch.float32), torch.as_tensor(elevation, dtype=torch.float32)
    return radius * torch.stack([torch.cos(elevation) * torch.cos(azimuth),
                                 torch.cos(elevation) * torch.sin(azimuth),
                                 torch.sin(elevation)], dim=-1)


def orbit_poses(n: int, radius: float = CAMERA_RADIUS, elevation_deg: float = 20.0) -> torch.Tensor:
    """n cameras evenly spaced on a horizontal circle, looking at the origin: (n, 4, 4)."""
    az = torch.arange(n, dtype=torch.float32) * (2 * math.pi / n)
    return look_at(sphere_to_xyz(radius, az, torch.full((n,), math.radians(elevation_deg))))


def spiral_poses(n: int, radius: float = CAMERA_RADIUS, elev_min_deg: float = 5.0,
                 elev_max_deg: float = 60.0, turns: float = 2.0) -> torch.Tensor:
    """n cameras on a spiral over the upper hemisphere (like SRN test views): (n, 4, 4)."""
    s = torch.linspace(0.0, 1.0, n)
    az = 2 * math.pi * turns * s
    el = torch.deg2rad(elev_min_deg + (elev_max_deg - elev_min_deg) * s)
    return look_at(sphere_to_xyz(radius, az, el))


def random_sphere_poses(n: int, radius: float = CAMERA_RADIUS, generator: torch.Generator | None = None,
                        elev_min_deg: float = -10.0, elev_max_deg: float = 80.0) -> torch.Tensor:
    """n cameras at uniformly random directions (area-uniform within the elevation band)."""
    u = torch.rand(n, generator=generator)
    lo, hi = math.sin(math.radians(elev_min_deg)), math.sin(math.radians(elev_max_deg))
    el = torch.asin(lo + (hi - lo) * u)
    az = 2 * math.pi * torch.rand(n, generator=generator)
    return look_at(sphere_to_xyz(radius, az, el))


def intrinsics(res: int, fov_deg: float = 51.98) -> torch.Tensor:
    """Square pinhole K for a res x res image with the given horizontal field of view.

    The default matches SRN cars: f = 131.25 px at 128 px (about 52 degrees).
    """
    f = 0.5 * res / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, res / 2], [0.0, f, res / 2], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------- test-spiral views
def scaled_view_ids(paper_ids, n_views: int) -> list[int]:
    """The views of an n_views spiral at the places of the paper's view indices (of 251),
    sorted, without repeats. THE one mapping from the paper's indices to a spiral.

    n_views >= 251: the indices themselves (SRN test objects have exactly 251 views, so view
    64 is the paper's view 64). Shorter spirals (our procedural test splits): paper view v
    becomes the nearest view at the same fraction of the way round, floor(v n / 251 + 1/2)
    mod n, in exact arithmetic (64 -> 6 of 24 views, 13 of 50; for an integer v < 251 and
    n < 251, v n / 251 is never a tie, so half-up and half-even agree)."""
    if n_views >= PAPER_N_VIEWS:
        return sorted({int(v) for v in paper_ids})
    return sorted({math.floor(Fraction(int(v)) * n_views / PAPER_N_VIEWS + Fraction(1, 2)) % n_views
                   for v in paper_ids})


def input_view_ids(n_views: int, count: int) -> list[int]:
    """The `count` input views of an n_views test spiral, as the paper picks them:

      * 1 or 2 views: the paper's fixed views 64 / 64 and 104 (PAPER_INPUT_VIEWS), placed
        by `scaled_view_ids` on spirals that are not 251 views long;
      * 3 or more: count views evenly spread over the spiral, first and last included,
        round(linspace(0, n - 1, count)) (utils.evenly_spaced): what the official loader
        picks when a config gives no fixed views (lib/datasets/shapenet_srn.py
        `ShapeNetSRN.parse_scene`; the official multi-view configs
        ssdnerf_cars_recons{4,8,16,32}v.py set num_test_imgs = 251 - count), so on
        251 views 4 inputs are views 0, 83, 167 and 250.

    If two of the paper's fixed views land on the same view of a very short spiral (2
    views of n = 2, 3 or 6), the evenly spread rule is used instead."""
    if not 1 <= count <= n_views:
        raise ValueError(f"input_view_ids: {count} input views, but the scene has {n_views}")
    ids = scaled_view_ids(PAPER_INPUT_VIEWS[count], n_views) if count in PAPER_INPUT_VIEWS else []
    return ids if len(ids) == count else evenly_spaced(n_views, count)


def eval_view_ids(n_views: int, input_ids, every: int = 1, at_most: int | None = None) -> list[int]:
    """The views scored against the ground truth: every `every`-th view that is not an
    input (every=1: all of them, as the paper scores all 251 - count other views), then, if
    `at_most` is given, at most that many of those, evenly spread (first and last kept)."""
    inputs = set(input_ids)
    rest = [i for i in range(n_views) if i not in inputs][::max(1, every)]
    return [rest[j] for j in evenly_spaced(len(rest), at_most)] if at_most else rest
