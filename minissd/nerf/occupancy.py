"""Per-scene occupancy grids for empty-space skipping, in pure PyTorch (the official code's
density grid / bitfield: lib/models/autodecoders/base_nerf.py `update_extra_state`, with
the CUDA kernels of lib/ops/raymarching).

A cell of a G^3 grid over [-bound, bound]^3 is occupied when the field could put weight
there:

    occ_b[i, j, k] = dilate( max_{p in P_ijk} sigma_b(p) > tau )

with P_ijk a few jittered points inside the cell (plus its centre), tau = min(cfg.occ_threshold,
mean density of the scene's grid) (as torch-ngp, so a young, faint field is not pruned away)
and `dilate` a 3x3x3 max-pool (one cell), so the grid errs on the side of "occupied".
Samples in empty cells would get alpha = 1 - exp(-sigma delta) ~ sigma delta < tau delta,
so skipping them changes the image by at most ~tau * (ray length) in opacity; with a
trained field (sigma ~ 0 in empty space) the difference is far below 8-bit precision.

The renderer (render.py) evaluates the decoder only at samples inside occupied cells. The
grid is rebuilt from the current density (`refresh`) every few iterations during training.

Departures from the paper: the official code keeps a 64^3 grid per scene updated with
CUDA kernels (EMA of density) once per outer iteration; minissd rebuilds it from scratch
from the max density of jittered points (res cfg.occ_grid_res, 32 on the laptop).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minissd.utils import rand


def cell_index(pts: torch.Tensor, res: int, bound: float = 1.0) -> torch.Tensor:
    """Integer cell coordinates (..., 3) of points (..., 3), clamped into the grid."""
    return ((pts + bound) / (2 * bound) * res).floor().long().clamp(0, res - 1)


def query_grid(grid: torch.Tensor, pts: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """grid: (B, G, G, G) bool, indexed [b, ix, iy, iz]; pts: (B, M, 3) -> (B, M) bool."""
    B, G = grid.shape[0], grid.shape[1]
    ijk = cell_index(pts, G, bound)
    lin = (ijk[..., 0] * G + ijk[..., 1]) * G + ijk[..., 2]            # (B, M)
    return grid.reshape(B, -1).gather(1, lin.reshape(B, -1)).reshape(pts.shape[:-1])


def cell_points(res: int, bound: float = 1.0, n_jitter: int = 4, generator=None, device="cpu"):
    """Cell centres plus n_jitter uniform points per cell: (G^3, 1 + n_jitter, 3)."""
    i = torch.arange(res, device=device, dtype=torch.float32)
    ijk = torch.stack(torch.meshgrid(i, i, i, indexing="ij"), dim=-1).reshape(-1, 1, 3)
    u = rand((ijk.shape[0], n_jitter, 3), generator, device)
    u = torch.cat([torch.full_like(u[:, :1], 0.5), u], dim=1)          # centre + jitter
    return -bound + (ijk + u) * (2 * bound / res)


@torch.no_grad()
def max_density_grid(density_fn, n_scenes: int, res: int, bound: float = 1.0,
                     n_jitter: int = 4, generator=None, device="cpu", chunk: int = 65536):
    """max sigma over jittered points of every cell, for B scenes: (B, G, G, G).

    density_fn(xyz (B, M, 3)) -> (B, M) (field.density from triplane.make_field).
    """
    pts = cell_points(res, bound, n_jitter, generator, device).reshape(-1, 3)
    pts = pts[None].expand(n_scenes, -1, 3)
    dens = torch.cat([density_fn(pts[:, i:i + chunk]) for i in range(0, pts.shape[1], chunk)], 1)
    return dens.reshape(n_scenes, res ** 3, 1 + n_jitter).amax(-1).reshape(n_scenes, res, res, res)


def dilate(grid: torch.Tensor, cells: int = 1) -> torch.Tensor:
    """Grow occupied regions by `cells` in every direction (3D max-pool). (B,G,G,G) bool."""
    if cells <= 0:
        return grid
    k = 2 * cells + 1
    return F.max_pool3d(grid[:, None].float(), k, stride=1, padding=cells)[:, 0] > 0


class OccupancyGrid:
    """Occupancy grids of N scenes: `.grid` (N, G, G, G) bool over [-bound, bound]^3."""

    def __init__(self, grid: torch.Tensor, bound: float = 1.0):
        self.grid, self.bound = grid, bound

    @classmethod
    def full(cls, n_scenes: int, res: int, device="cpu", bound: float = 1.0) -> "OccupancyGrid":
        """Every cell occupied (what the renderer does without a grid)."""
        return cls(torch.ones(n_scenes, res, res, res, dtype=torch.bool, device=device), bound)

    @classmethod
    def from_field(cls, field, n_scenes: int, res: int, threshold: float, bound: float = 1.0,
                   n_jitter: int = 4, dilation: int = 1, generator=None, device="cpu"):
        """Build the grid of the B = n_scenes scenes of `field` (triplane.make_field)."""
        density = getattr(field, "density", None) or (lambda p: field(p, torch.zeros_like(p))[0])
        dens = max_density_grid(density, n_scenes, res, bound, n_jitter, generator, device)
        # like torch-ngp: never prune cells denser than the scene's mean (a young field
        # with small density everywhere is not "empty")
        thr = dens.mean(dim=(1, 2, 3), keepdim=True).clamp(max=threshold)
        return cls(dilate(dens > thr, dilation), bound)

    @property
    def res(self) -> int:
        return self.grid.shape[1]

    def __len__(self) -> int:
        return self.grid.shape[0]

    def __getitem__(self, idx) -> "OccupancyGrid":
        """The grids of scenes idx (a view for the renderer of a batch)."""
        idx = torch.as_tensor(idx, device=self.grid.device)
        return OccupancyGrid(self.grid[idx.reshape(-1)], self.bound)

    def query(self, pts: torch.Tensor) -> torch.Tensor:
        """pts (B, M, 3) -> (B, M) bool: is the sample's cell occupied?"""
        return query_grid(self.grid, pts, self.bound)

    @torch.no_grad()
    def refresh(self, field, idx, threshold: float, n_jitter: int = 4, dilation: int = 1,
                generator=None):
        """Rebuild the grids of scenes idx (B,) from field (a make_field of those B scenes)."""
        idx = torch.as_tensor(idx, device=self.grid.device).reshape(-1)
        new = OccupancyGrid.from_field(field, len(idx), self.res, threshold, self.bound,
                                       n_jitter, dilation, generator, self.grid.device)
        self.grid[idx] = new.grid
        return self

    def fraction(self) -> torch.Tensor:
        """Occupied fraction of each scene's grid: (N,)."""
        return self.grid.float().mean(dim=(1, 2, 3))

    def state_dict(self) -> dict:
        return {"grid": self.grid.cpu(), "bound": self.bound}

    @classmethod
    def from_state_dict(cls, sd: dict, device="cpu") -> "OccupancyGrid":
        return cls(sd["grid"].to(device), sd["bound"])
