"""Volume rendering: compositing by hand, an analytic slab, early termination, skipping."""
import math

import torch

from minissd.data import cameras
from minissd.nerf.occupancy import OccupancyGrid, dilate, query_grid
from minissd.nerf.render import composite, render_image, render_rays


def test_composite_matches_hand_computation():
    sigma = torch.tensor([1.0, 2.0, 0.5])
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    t = torch.tensor([1.0, 1.5, 2.0])
    out = composite(sigma, rgb, torch.tensor(0.5), t)
    T = torch.tensor([1.0, math.exp(-0.5), math.exp(-1.5)])
    a = torch.tensor([1 - math.exp(-0.5), 1 - math.exp(-1.0), 1 - math.exp(-0.25)])
    w = T * a
    torch.testing.assert_close(out["transmittance"], T)
    torch.testing.assert_close(out["weights"], w)
    torch.testing.assert_close(out["rgb"], w)                         # one-hot colours
    torch.testing.assert_close(out["acc"], w.sum())
    torch.testing.assert_close(out["depth"], (w * t).sum())
    torch.testing.assert_close(out["T_end"], torch.tensor(math.exp(-1.75)))
    torch.testing.assert_close(out["acc"], 1 - out["T_end"])          # telescoping sum


def test_early_termination_drops_samples_behind_opaque_ones():
    sigma = torch.tensor([0.0, 100.0, 1.0, 1.0])
    out = composite(sigma, torch.ones(4, 3), torch.tensor(0.1), torch.arange(4.0))
    # T before sample 2 is exp(-10) < 1e-4: samples 2, 3 contribute nothing
    assert out["weights"][2] == 0 and out["weights"][3] == 0
    assert out["weights"][1] > 0.99


def constant_field(s, colour=(0.2, 0.4, 0.6)):
    c = torch.tensor(colour)

    def field(xyz, dirs):
        return torch.full(xyz.shape[:-1], s), c.expand(xyz.shape[:-1] + (3,))
    return field


def test_constant_density_box_matches_beer_lambert():
    s, L = 0.7, 2.0
    o = torch.tensor([[[0.0, -2.6, 0.0], [0.3, 0.2, -3.0]]])
    d = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    out = render_rays(constant_field(s), o, d, n_samples=32)
    acc = 1 - math.exp(-s * L)                                          # both chords have L=2
    torch.testing.assert_close(out["acc"], torch.full((1, 2), acc))
    want = torch.tensor([0.2, 0.4, 0.6]) * acc + (1 - acc)              # white background
    torch.testing.assert_close(out["rgb"][0, 0], want)
    # analytic expected depth of an exponential inside [near, far], up to quadrature error
    near = 1.6
    depth = (1 / s - (1 / s + L) * math.exp(-s * L)) + near * acc
    assert abs(out["depth"][0, 0].item() - depth) < 2e-3


def test_slab_inside_box_and_missed_rays():
    s = 3.0

    def slab(xyz, dirs):                                               # density only |y| < 0.25
        return s * (xyz[..., 1].abs() < 0.25).float(), torch.zeros(xyz.shape[:-1] + (3,))
    o = torch.tensor([[[0.0, -2.6, 0.0], [5.0, 5.0, 5.0]]])
    d = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])             # second ray misses
    out = render_rays(slab, o, d, n_samples=400)
    assert abs(out["acc"][0, 0].item() - (1 - math.exp(-s * 0.5))) < 1e-2
    assert out["acc"][0, 1] == 0 and torch.equal(out["rgb"][0, 1], torch.ones(3))


def ellipsoid_field(xyz, dirs):
    r = ((xyz / torch.tensor([0.8, 0.4, 0.3])) ** 2).sum(-1)
    sigma = 40.0 * torch.sigmoid((1 - r) * 30) + 1e-5                  # tiny density outside
    rgb = torch.stack([0.5 + 0.5 * xyz[..., 0], 0.3 + 0.3 * dirs[..., 0].abs(),
                       0.5 - 0.4 * xyz[..., 2]], -1).clamp(0, 1)
    return sigma, rgb


def test_segments_do_not_change_the_image():
    c2w = cameras.orbit_poses(2, radius=2.6)
    o, d = cameras.pixel_rays(c2w, cameras.intrinsics(16), 16, 16)
    o, d = o.reshape(2, -1, 3), d.reshape(2, -1, 3)
    a = render_rays(ellipsoid_field, o, d, 48, segments=1)
    b = render_rays(ellipsoid_field, o, d, 48, segments=5)
    for k in ("rgb", "acc", "depth"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


def test_occupancy_grid_query_and_dilation():
    grid = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    grid[0, 1, 2, 3] = True
    pts = torch.tensor([[[-0.4, 0.1, 0.9], [0.9, 0.9, 0.9]]])          # cells (1,2,3), (3,3,3)
    assert query_grid(grid, pts).tolist() == [[True, False]]
    g = dilate(grid, 1)
    assert g.sum() == 3 * 3 * 2 and g[0, 2, 3, 2] and not g[0, 3, 0, 0]


def test_occupancy_skipping_agrees_with_dense_rendering_and_evaluates_less():
    count = {"n": 0}

    def field(xyz, dirs):
        count["n"] += xyz.shape[0] * xyz.shape[1]
        return ellipsoid_field(xyz, dirs)
    field.density = lambda xyz: ellipsoid_field(xyz, xyz)[0]
    occ = OccupancyGrid.from_field(field, 1, 16, threshold=0.01,
                                   generator=torch.Generator().manual_seed(0))
    assert 0.02 < occ.fraction().item() < 0.5
    c2w, K = cameras.orbit_poses(3, radius=2.6, elevation_deg=30)[1:2], cameras.intrinsics(32)
    dense = render_image(field, c2w, K, 32, 32, 64, early_stop=False)
    n_dense, count["n"] = count["n"], 0
    fast = render_image(field, c2w, K, 32, 32, 64, occupancy=occ, early_stop=True)
    mse = (dense["rgb"] - fast["rgb"]).pow(2).mean()
    assert -10 * torch.log10(mse) > 40
    assert count["n"] < n_dense / 3
    assert dense["acc"].max() > 0.99 and dense["acc"].min() < 0.01        # object and background


def test_render_image_takes_v_cameras_per_scene():
    """(B, V, 4, 4) cameras give (B, V, H, W, 3), view v of scene b equal to rendering that
    scene from that one camera; K may be shared (3, 3) or per camera (B, V, 3, 3)."""
    def field(xyz, dirs):
        return ellipsoid_field(xyz, dirs)
    c2w = cameras.orbit_poses(3, radius=2.6, elevation_deg=30)              # (3, 4, 4)
    K = cameras.intrinsics(12)
    cams = torch.stack([c2w, c2w.flip(0)])                                   # (2, 3, 4, 4)

    class TwoScenes:                                                          # a 2-scene field
        batch_size = 2

        def __call__(self, xyz, dirs):
            sigma, rgb = field(xyz, dirs)
            return sigma * torch.tensor([[1.0], [0.5]]), rgb
    multi = render_image(TwoScenes(), cams, K, 12, 12, 24)
    assert multi["rgb"].shape == (2, 3, 12, 12, 3) and multi["depth"].shape == (2, 3, 12, 12)
    for v in range(3):
        one = render_image(TwoScenes(), cams[:, v], K, 12, 12, 24)           # (2, 12, 12, 3)
        assert torch.allclose(multi["rgb"][:, v], one["rgb"], atol=1e-6)
    per_cam = render_image(TwoScenes(), cams, K.expand(2, 3, 3, 3), 12, 12, 24)
    assert torch.equal(per_cam["rgb"], multi["rgb"])
    assert not torch.allclose(multi["rgb"][0], multi["rgb"][1])               # scenes differ

