"""Coloured mesh export of a triplane NeRF: marching cubes on the raw density, vertex
colours from the radiance field, binary PLY / OBJ files.

Geometry (as the official code, lib/core/utils/nerf_utils.py `extract_geometry`): the
raw density sigma(p) = psi_sigma(f_x(p)) (decoder.py) is evaluated on a res^3 grid over
the object box grown by a margin, [-(b + m), b + m]^3 (official: b = 1, m = 0.1),
with sigma = 0 outside [-b, b]^3 so that every surface closes; the surface is the
level set

    S = { p : sigma(p) = tau }           (tau = 10, the official threshold)

extracted by marching cubes (scikit-image's `measure.marching_cubes`, the Lewiner
variant; PyMCubes, which the official code uses, gives the same vertices and faces on
our grids and is slower -- benchmarks/bench_mesh.py measures both). Faces are oriented
so that their normals point out of the object (positive signed volume).

Colour (the official export has none): a vertex v with outward unit normal n gets the
colour a camera looking straight at it along the inward normal -n would see, i.e. the
volume-rendering composite (render.py `composite`, eq. 1 of the paper) of a short ray

    r(t) = v + (a - t) n,  t in [0, 2a],  direction d = -n,   a = 3 voxels
    c(v) = sum_i w_i c(r(t_i), -n) / sum_i w_i

normalised by its opacity (no background). Where that ray sees almost no density
(sum_i w_i < 1e-3) the colour at v itself is used.

Files (written by hand; read back in tests/test_mesh.py by an independent reader):
binary little-endian PLY with float32 x y z, nx ny nz, uchar red green blue and int32
faces (MeshLab, Blender, trimesh, Open3D read it), and OBJ with the common `v x y z r g b`
vertex-colour extension. Coordinates are minissd units (box [-1, 1]^3, z up; SRN units
are half of these).
"""
from __future__ import annotations

from dataclasses import dataclass
import os

import numpy as np
import torch

from minissd.eval.geometry import density_grid
from minissd.nerf.render import composite
from minissd.nerf.triplane import make_field
from minissd.utils import write_atomic


@dataclass
class Mesh:
    """A triangle mesh: vertices (V, 3) float32, faces (F, 3) int32 (outward winding),
    normals (V, 3) float32 unit, colors (V, 3) uint8 or None."""
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray | None = None

    def euler_characteristic(self) -> int:
        """V - E + F (2 for one closed surface of genus 0)."""
        e = np.sort(np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]],
                                    self.faces[:, [2, 0]]]), axis=1)
        n_edges = len(np.unique(e, axis=0))
        return len(np.unique(self.faces)) - n_edges + len(self.faces)

    def save(self, path: str) -> str:
        """Write .ply (binary) or .obj, by the file's extension."""
        ext = os.path.splitext(path)[1].lower()
        if ext == ".ply":
            return write_ply(self, path)
        if ext == ".obj":
            return write_obj(self, path)
        raise ValueError(f"{path}: unknown mesh format {ext!r} (use .ply or .obj)")


def boxed_density(density_fn, bound: float = 1.0):
    """sigma(p) inside [-bound, bound]^3, 0 outside (the official export does the same),
    so surfaces touching the box close. density_fn: (M, 3) -> (M,)."""
    def fn(xyz):
        inside = (xyz.abs() <= bound).all(dim=-1)
        return torch.where(inside, density_fn(xyz).reshape(-1), torch.zeros_like(xyz[:, 0]))
    return fn


def marching_cubes(sigma: np.ndarray, threshold: float, lo: float, h: float):
    """Level set {sigma = threshold} of a grid of cell-centre values (res, res, res),
    indexed (x, y, z), whose first centre sits at lo + h / 2 and spacing is h.
    Returns vertices (V, 3) float32 in world units and faces (F, 3) int32, oriented
    outward (density higher inside). Raises ValueError when nothing crosses threshold."""
    from skimage import measure
    sigma = np.asarray(sigma, dtype=np.float32)
    if not (sigma.max() > threshold > sigma.min()):
        raise ValueError(f"mesh: no surface at density threshold {threshold:g} (the field's density "
                         f"ranges {sigma.min():.3g} to {sigma.max():.3g}); pick another --threshold")
    verts, faces, _, _ = measure.marching_cubes(sigma, level=threshold)
    verts = (lo + (verts + 0.5) * h).astype(np.float32)               # index -> world
    faces = faces.astype(np.int32)
    if signed_volume(verts, faces) < 0:                                # make normals point out
        faces = faces[:, ::-1].copy()
    return verts, faces


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    """sum over faces of det(v0, v1, v2) / 6: the enclosed volume, > 0 for outward winding."""
    v = verts[faces].astype(np.float64)                                # (F, 3, 3)
    return float(np.einsum("fi,fi->f", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted mean of the adjacent faces' normals, unit length: (V, 3)."""
    v = verts[faces].astype(np.float64)
    fn = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])               # (F, 3), |.| = 2 area
    n = np.zeros_like(verts, dtype=np.float64)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@torch.no_grad()
def vertex_colors(field, verts: np.ndarray, normals: np.ndarray, reach: float,
                  n_samples: int = 16, chunk: int = 8192, device="cpu") -> np.ndarray:
    """Colour seen along the inward normal (module docstring): (V, 3) uint8.

    field(xyz (1, M, 3), dirs (1, M, 3)) -> (sigma (1, M), rgb (1, M, 3)) (a one-scene
    TriplaneField or any field callable); reach = a (world units)."""
    v = torch.as_tensor(verts, device=device)
    n = torch.as_tensor(normals, device=device)
    t = (torch.arange(n_samples, device=device) + 0.5) * (2 * reach / n_samples)   # (S,)
    out = []
    for i in range(0, len(v), chunk):
        vi, ni = v[i:i + chunk], n[i:i + chunk]                          # (m, 3)
        pts = vi[:, None] + (reach - t)[None, :, None] * ni[:, None]     # (m, S, 3)
        dirs = (-ni)[:, None].expand_as(pts)
        sigma, rgb = field(pts.reshape(1, -1, 3), dirs.reshape(1, -1, 3))
        m = len(vi)
        res = composite(sigma.reshape(m, n_samples), rgb.reshape(m, n_samples, 3),
                        2 * reach / n_samples, t.expand(m, -1))
        acc = res["acc"][:, None]                                        # (m, 1)
        _, at_v = field(vi[None], -ni[None])                             # (1, m, 3)
        col = torch.where(acc > 1e-3, res["rgb"] / acc.clamp_min(1e-3), at_v[0])
        out.append(col.clamp(0, 1))
    return (torch.cat(out) * 255).round().to(torch.uint8).cpu().numpy()


def extract_mesh(field, resolution: int = 256, threshold: float = 10.0, bound: float = 1.0,
                 margin: float = 0.1, colors: bool = True, chunk: int = 1 << 18,
                 device=None) -> Mesh:
    """Marching cubes on the density of a one-scene field (+ vertex colours).

    field: a TriplaneField of batch size 1 (make_field), or any callable
    field(xyz (1, M, 3), dirs (1, M, 3)) -> (sigma (1, M), rgb (1, M, 3)); its
    `.density` is used when present. The grid has resolution^3 cells over
    [-(bound + margin), bound + margin]^3."""
    dens = getattr(field, "density", None) or (lambda p: field(p, torch.zeros_like(p))[0])
    if device is None:
        x = getattr(field, "x", None)
        device = x.device if torch.is_tensor(x) else "cpu"
    B = bound + margin
    h = 2 * B / resolution
    with torch.no_grad():
        sigma = density_grid(boxed_density(lambda p: dens(p[None])[0], bound), resolution, B,
                             chunk, device)                              # (res, res, res)
    verts, faces = marching_cubes(sigma.cpu().numpy(), threshold, -B, h)
    normals = vertex_normals(verts, faces)
    rgb = vertex_colors(field, verts, normals, reach=3 * h, device=device) if colors else None
    return Mesh(verts, faces, normals, rgb)


def export_mesh(model_or_decoder, code: torch.Tensor, path: str | None = None,
                resolution: int = 256, threshold: float = 10.0, **kw) -> Mesh:
    """The coloured mesh of one scene code (3, C, R, R) under a Model (ssd/model.py) or a
    TriplaneDecoder; written to `path` (.ply or .obj) when given. Returns the Mesh."""
    code = code[None] if code.dim() == 4 else code                       # (1, 3, C, R, R)
    if code.shape[0] != 1:
        raise ValueError(f"export_mesh: one code at a time, got a batch of {code.shape[0]}")
    decoder = getattr(model_or_decoder, "decoder", model_or_decoder)
    dev = next(decoder.parameters()).device
    mesh = extract_mesh(make_field(decoder, code.to(dev).float()), resolution, threshold, **kw)
    if path is not None:
        mesh.save(path)
    return mesh


# ----------------------------------------------------------------------------- files
def write_ply(mesh: Mesh, path: str) -> str:
    """Binary little-endian PLY: x y z nx ny nz (float32) [red green blue (uchar)], faces as
    `list uchar int vertex_indices`."""
    V, F = len(mesh.vertices), len(mesh.faces)
    vtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    props = ["float x", "float y", "float z", "float nx", "float ny", "float nz"]
    if mesh.colors is not None:
        vtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        props += ["uchar red", "uchar green", "uchar blue"]
    vert = np.empty(V, dtype=vtype)
    for k, name in enumerate("xyz"):
        vert[name] = mesh.vertices[:, k]
        vert["n" + name] = mesh.normals[:, k]
    if mesh.colors is not None:
        for k, name in enumerate(("red", "green", "blue")):
            vert[name] = mesh.colors[:, k]
    face = np.empty(F, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"], face["i"] = 3, mesh.faces
    header = "\n".join(["ply", "format binary_little_endian 1.0", "comment minissd export-mesh",
                        f"element vertex {V}"] + [f"property {p}" for p in props]
                       + [f"element face {F}", "property list uchar int vertex_indices",
                          "end_header"]) + "\n"
    return _write(path, header.encode("ascii") + vert.tobytes() + face.tobytes())


def write_obj(mesh: Mesh, path: str) -> str:
    """Wavefront OBJ: `v x y z [r g b]` (colour in [0, 1]), `vn`, and 1-based `f a//a ...`."""
    cols = None if mesh.colors is None else mesh.colors.astype(np.float32) / 255
    vs = np.hstack([mesh.vertices] + ([cols] if cols is not None else []))
    fmt = "v" + " %.6f" * vs.shape[1]
    f1 = mesh.faces.astype(np.int64) + 1
    lines = ["# minissd export-mesh"]
    lines += [fmt % tuple(r) for r in vs]
    lines += ["vn %.5f %.5f %.5f" % tuple(r) for r in mesh.normals]
    lines += ["f %d//%d %d//%d %d//%d" % (a, a, b, b, c, c) for a, b, c in f1]
    return _write(path, ("\n".join(lines) + "\n").encode("ascii"))


def _write(path: str, data: bytes) -> str:
    return write_atomic(path, lambda f: f.write(data))                 # temp file + rename


def plot_mesh(mesh: Mesh, ax=None, elev: float = 20.0, azim: float = 30.0, shade: bool = True):
    """Draw a Mesh with matplotlib (an independent renderer: Poly3DCollection, painter's
    algorithm), faces coloured by the mean of their vertex colours and lit by a headlight
    (Lambert on the face normal). Meshes of ~50k faces draw in seconds: export at
    resolution 64-96 for a figure. Returns the Axes3D."""
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    if ax is None:
        ax = plt.figure(figsize=(4, 4)).add_subplot(projection="3d")
    tri = mesh.vertices[mesh.faces]                                      # (F, 3, 3)
    rgb = (mesh.colors[mesh.faces].mean(1) / 255 if mesh.colors is not None
           else np.full((len(tri), 3), 0.7))
    if shade:
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
        e, a = np.radians(elev), np.radians(azim)
        eye = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        rgb = rgb * (0.35 + 0.65 * np.clip(fn @ eye, 0, 1))[:, None]
    ax.add_collection3d(Poly3DCollection(tri, facecolors=np.clip(rgb, 0, 1), linewidths=0))
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    c, r = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set_xlim(c[0] - r, c[0] + r), ax.set_ylim(c[1] - r, c[1] + r), ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_box_aspect((1, 1, 1), zoom=1.5)                               # fill the axes
    ax.view_init(elev=elev, azim=azim)
    ax.set_xlabel("x"), ax.set_ylabel("y"), ax.set_zlabel("z")
    return ax
