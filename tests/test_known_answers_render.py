"""Known answers for the renderer, occupancy grids and decoder, on inputs where a plausible
wrong formula gives a different number (benchmarks/plant_bugs.py plants those formulas).

Each expected value is worked out by hand in the comments: the background colour of a
non-white composite, Beer-Lambert through the occupied half of a box, cell centres,
the max (not mean) density of a cell, the two branches of the occupancy threshold,
the stretched sigmoid and where the view direction enters the colour branch.
"""
import math

import torch
import torch.nn.functional as F

from minissd.nerf.decoder import TriplaneDecoder, sh_basis
from minissd.nerf.occupancy import OccupancyGrid, cell_points, max_density_grid
from minissd.nerf.render import render_rays


def constant_field(sigma, colour=(0.2, 0.4, 0.6)):
    c = torch.tensor(colour)

    def field(xyz, dirs):
        return torch.full(xyz.shape[:-1], sigma), c.expand(xyz.shape[:-1] + (3,))
    return field


def ray_along_y(n_scenes=1):
    """A ray through the box centre along +y: the chord is y in [-1, 1] (length 2)."""
    o = torch.tensor([0.0, -2.6, 0.0]).expand(n_scenes, 1, 3)
    d = torch.tensor([0.0, 1.0, 0.0]).expand(n_scenes, 1, 3)
    return o, d


def test_background_is_the_argument_not_always_white():
    """C = sum_i w_i c_i + bg (1 - acc): with bg = 0 the pixel is c acc, with bg = 0.25 it is
    c acc + 0.25 (1 - acc); acc = 1 - exp(-0.7 * 2) on the chord of length 2."""
    o, d = ray_along_y()
    acc = 1 - math.exp(-0.7 * 2)
    c = torch.tensor([0.2, 0.4, 0.6])
    for bg in (0.0, 0.25):
        out = render_rays(constant_field(0.7), o, d, 32, background=bg)
        torch.testing.assert_close(out["rgb"][0, 0], c * acc + bg * (1 - acc))


def test_masked_scene_in_a_batch_gets_density_only_in_occupied_cells():
    """Two scenes of one constant field (sigma = 0.7), one grid each: scene 0 all occupied,
    scene 1 only the cells with y < 0. Along the y-axis ray the 32 bin centres split 16/16
    at y = 0, so scene 1 integrates sigma over length 1: acc = 1 - exp(-0.7), scene 0 over
    2. Scene 1 keeps fewer samples than scene 0, so the batch is padded: a padding slot
    that kept the field's density would add opacity behind y = 0."""
    grid = torch.ones(2, 4, 4, 4, dtype=torch.bool)
    grid[1, :, 2:, :] = False                                           # scene 1: y >= 0 empty
    o, d = ray_along_y(2)
    out = render_rays(constant_field(0.7), o, d, 32, occupancy=OccupancyGrid(grid))
    want = torch.tensor([1 - math.exp(-1.4), 1 - math.exp(-0.7)])
    torch.testing.assert_close(out["acc"][:, 0], want)
    c = torch.tensor([0.2, 0.4, 0.6])
    torch.testing.assert_close(out["rgb"][1, 0], c * want[1] + (1 - want[1]))


def test_cell_points_start_with_the_cell_centre():
    """G = 2 over [-1, 1]^3: cells of width 1, centres at +-0.5 ([ix, iy, iz] order, z
    fastest) come first; jittered points lie inside their own cell."""
    p = cell_points(2, 1.0, n_jitter=1, generator=torch.Generator().manual_seed(0))
    assert p.shape == (8, 2, 3)
    want = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    torch.testing.assert_close(p[:, 0], want)
    q = cell_points(4, 2.0, n_jitter=5, generator=torch.Generator().manual_seed(0))   # width 1
    centre_cell = ((q[:, :1] + 2.0) // 1.0)
    assert torch.equal(((q + 2.0) // 1.0), centre_cell.expand_as(q))


def test_cell_density_is_the_max_over_its_points():
    """sigma = 1 where x > 0.4, else 0. G = 4 over [-1, 1]: cell ix = 2 is x in [0, 0.5], so
    only a fifth of it is dense; with 64 jittered points per cell the max is 1 (a miss has
    probability 0.8^64 ~ 1e-6) while the mean would be ~0.2. Cells ix = 3 are all dense,
    ix = 0, 1 empty."""
    dens = max_density_grid(lambda p: (p[..., 0] > 0.4).float(), 1, 4, n_jitter=64,
                            generator=torch.Generator().manual_seed(0))
    assert dens.shape == (1, 4, 4, 4)
    assert (dens[0, 2] == 1).all() and (dens[0, 3] == 1).all() and (dens[0, :2] == 0).all()


def block_field(inside, outside):
    """Density `inside` on the cube |p|_inf < 0.5, `outside` elsewhere."""
    class Field:
        def density(self, p):
            return torch.where((p.abs() < 0.5).all(-1), torch.tensor(inside), torch.tensor(outside))
    return Field()


def test_occupancy_threshold_and_dilation_by_hand():
    """G = 8 over [-1, 1] (cells 0.25 wide): the dense cube |p| < 0.5 is cells 2..5 on each
    axis (4^3 = 64 cells), no cell straddles its face.
    * trained field (10 inside, 0.001 outside, mean 10 * 64/512 > 0.1 = threshold):
      tau = 0.1, the 64 cells occupied, dilated by one cell: cells 1..6, 6^3 = 216;
    * young field (0.002 inside, 0 outside, threshold 0.01 above the mean 0.00025):
      tau = min(0.01, mean) = 0.00025, so the 64 inside cells stay occupied (a fixed
      threshold of 0.01 would prune the whole scene)."""
    trained = OccupancyGrid.from_field(block_field(10.0, 1e-3), 1, 8, threshold=0.1,
                                       generator=torch.Generator().manual_seed(0))
    want = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    want[:, 1:7, 1:7, 1:7] = True
    assert torch.equal(trained.grid, want) and int(trained.grid.sum()) == 216
    young = OccupancyGrid.from_field(block_field(2e-3, 0.0), 1, 8, threshold=0.01, dilation=0,
                                     generator=torch.Generator().manual_seed(0))
    want = torch.zeros(1, 8, 8, 8, dtype=torch.bool)
    want[:, 2:6, 2:6, 2:6] = True
    assert torch.equal(young.grid, want)


def test_colour_is_the_stretched_sigmoid():
    """c = (1 + 2 s) sigmoid(logit) - s with s = 1e-3: logit 0 gives exactly 0.5, logit 2
    gives 1.002 * 0.880797 - 0.001 = 0.881559 (a (1 + s) stretch gives 0.880678)."""
    dec = TriplaneDecoder(2, hidden=8)
    with torch.no_grad():
        dec.color_head.weight.zero_()
        dec.color_head.bias.copy_(torch.tensor([0.0, 2.0, -3.0]))
    _, rgb = dec(torch.randn(5, 6), F.normalize(torch.randn(5, 3), dim=-1))
    s = 1e-3
    want = (1 + 2 * s) * torch.sigmoid(torch.tensor([0.0, 2.0, -3.0])) - s
    torch.testing.assert_close(rgb, want.expand(5, 3))
    assert abs(rgb[0, 1].item() - 0.881559) < 1e-5


def test_view_direction_enters_before_the_silu():
    """c = (1 + 2 s) sigmoid(W_c SiLU(W1 f + b1 + W_d Y(d) + b_d) + b_c) - s, written out
    with a non-zero W_d (at init W_d = 0 hides where Y(d) is added)."""
    torch.manual_seed(0)
    dec = TriplaneDecoder(2, hidden=8)
    with torch.no_grad():
        dec.dir_net.weight.normal_()
        dec.dir_net.bias.normal_()
    f, d = torch.randn(4, 6), F.normalize(torch.randn(4, 3), dim=-1)
    h = f @ dec.base.weight.T + dec.base.bias
    g = F.silu(h + sh_basis(d) @ dec.dir_net.weight.T + dec.dir_net.bias)
    want = 1.002 * torch.sigmoid(g @ dec.color_head.weight.T + dec.color_head.bias) - 1e-3
    _, rgb = dec(f, d)
    torch.testing.assert_close(rgb, want)
