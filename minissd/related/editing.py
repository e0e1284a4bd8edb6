"""Editing by swapping codes: CodeNeRF's shape/texture grid, and the same question asked
of minissd's triplanes (the CodeNeRF paper's Fig. "shape/texture editing"; the official
code lists editing as not released).

CodeNeRF: object i has z^i = (z_s^i, z_t^i). The grid

    G[i, j] = render( F(., z_s^i, z_t^j) )       rows: shapes, columns: textures

keeps object i's SHAPE and takes object j's TEXTURE; its diagonal is the objects
themselves. Because the density branch never sees z_t (codenerf.py), every image in a row
has the same silhouette by construction; whether the colours really follow the columns is
what the grid shows.

SSDNeRF's triplane x = (P_xy, P_xz, P_yz), each with C channels, has no such split: one
shared decoder reads density and colour from the same features. The analogue swaps a part
of x -- whole planes, or a group of channels of all three planes -- between two objects:

    x' = x^i with part(x^j) written over part(x^i)

and the renders show what (if anything) that part controls. Nothing guarantees a
meaningful edit; the notebook shows the result as it is.
"""
from __future__ import annotations

import torch

from minissd.nerf.triplane import PLANE_NAMES

PARTS = {"shape": 0, "texture": 1}


def swap_codes(codes_a: torch.Tensor, codes_b: torch.Tensor, part: str) -> torch.Tensor:
    """codes_a (..., 2, D) with its `part` ('shape' or 'texture') taken from codes_b."""
    if part not in PARTS:
        raise ValueError(f"swap_codes: part must be one of {sorted(PARTS)}, got {part!r}")
    out = codes_a.clone()
    out[..., PARTS[part], :] = codes_b[..., PARTS[part], :]
    return out


def grid_codes(codes: torch.Tensor) -> torch.Tensor:
    """All shape x texture pairs of N objects' codes (N, 2, D) -> (N, N, 2, D), [i, j] =
    (z_s^i, z_t^j)."""
    N = codes.shape[0]
    return swap_codes(codes[:, None].expand(N, N, *codes.shape[1:]),
                      codes[None].expand(N, N, *codes.shape[1:]), "texture")


def swap_triplane(x_a: torch.Tensor, x_b: torch.Tensor, planes=(), channels=None) -> torch.Tensor:
    """x_a (..., 3, C, R, R) with the planes `planes` (indices into xy, xz, yz) and/or the
    channels `channels` (a slice or index list, of all three planes) taken from x_b."""
    out = x_a.clone()
    for k in planes:
        out[..., k, :, :, :] = x_b[..., k, :, :, :]
    if channels is not None:
        out[..., :, channels, :, :] = x_b[..., :, channels, :, :]
    return out


def grid_triplanes(x: torch.Tensor, planes=(), channels=None) -> torch.Tensor:
    """(N, 3, C, R, R) -> (N, N, 3, C, R, R): [i, j] = x^i with the named part from x^j."""
    N = x.shape[0]
    return swap_triplane(x[:, None].expand(N, N, *x.shape[1:]), x[None].expand(N, N, *x.shape[1:]),
                         planes, channels)


def describe_part(planes=(), channels=None) -> str:
    words = [f"plane{'s' if len(planes) > 1 else ''} " + "+".join(PLANE_NAMES[k] for k in planes)] if planes else []
    if channels is not None:
        words.append(f"channels {channels}")
    return ", ".join(words) or "nothing"


@torch.no_grad()
def render_grid(render_one, codes_grid: torch.Tensor) -> torch.Tensor:
    """Render every cell of a code grid (N, M, ...) with render_one(code (1, ...)) -> (H, W, 3):
    returns (N, M, H, W, 3)."""
    N, M = codes_grid.shape[:2]
    return torch.stack([torch.stack([render_one(codes_grid[i, j][None]) for j in range(M)])
                        for i in range(N)])


def plot_grid(images: torch.Tensor, row_label: str, col_label: str, title: str = "",
              size: float = 1.3):
    """A figure of images (N, M, H, W, 3): rows labelled row_label i, columns col_label j."""
    import matplotlib.pyplot as plt
    N, M = images.shape[:2]
    fig, axes = plt.subplots(N, M, figsize=(size * M, size * N), squeeze=False)
    for i in range(N):
        for j in range(M):
            ax = axes[i, j]
            ax.imshow(images[i, j].clamp(0, 1).cpu().numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{col_label} {j}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{row_label} {i}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
