"""Marching-cubes libraries on minissd's density grids: scikit-image against PyMCubes.

    OMP_NUM_THREADS=1 python benchmarks/bench_mesh.py [--model MODEL.pt] [--res 128 256]

For a shipped model's training code (default: the laptop single-stage model, scene 0) and
an analytic sphere of radius 0.6, at each grid resolution: the seconds to evaluate the
density grid (mesh.py's boxed density over +-1.1), then for each library installed
(`skimage.measure.marching_cubes`, `mcubes.marching_cubes`) its seconds, the vertex and
face counts, the Euler characteristic, the edges not shared by exactly two faces (0 for
a closed surface), degenerate (zero-area) faces, and for the sphere the largest distance
of a vertex from the true radius in voxels. Finally the seconds of the vertex colours
(mesh.vertex_colors) and of a whole export. Prints a table; minissd uses scikit-image.
With --figure PATH: the exported PLY of the scene (read back from the file, resolution
--figure-res) drawn by matplotlib from three directions, above the NeRF's renders from the
same directions (the README's picture).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import time

import numpy as np
import torch

from minissd.eval.geometry import density_grid
from minissd.nerf import mesh as M
from minissd.ssd.model import ASSETS, Model


def mc(lib: str, sigma: np.ndarray, level: float):
    if lib == "skimage":
        from skimage import measure
        v, f, _, _ = measure.marching_cubes(sigma, level)
    else:
        import mcubes
        v, f = mcubes.marching_cubes(sigma, level)
    return np.asarray(v, np.float64), np.asarray(f, np.int64)


def quality(v, f):
    e = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    edges, count = np.unique(e, axis=0, return_counts=True)
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    return {"V": len(v), "F": len(f), "euler": len(np.unique(f)) - len(edges) + len(f),
            "open_edges": int((count != 2).sum()), "degenerate": int((area < 1e-12).sum())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = sorted(glob.glob(os.path.join(ASSETS, "models", "cars-single-stage-laptop-allv-*.pt")))
    p.add_argument("--model", default=default[0] if default else None)
    p.add_argument("--scene", type=int, default=0)
    p.add_argument("--res", type=int, nargs="+", default=[128, 256])
    p.add_argument("--figure", help="write a PNG of the exported mesh vs the NeRF here")
    p.add_argument("--figure-res", type=int, default=96)
    args = p.parse_args(argv)
    libs = [lib for lib in ("skimage", "mcubes") if importlib.util.find_spec(lib)]
    model = Model.load(args.model)
    field = model.field(model.codes[args.scene:args.scene + 1])
    dens = M.boxed_density(lambda x: field.density(x[None])[0])
    sphere = M.boxed_density(lambda x: 20 * torch.sigmoid((0.6 - x.norm(dim=-1)) / 0.03))
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores), torch threads {torch.get_num_threads()}")
    for res in args.res:
        h = 2.2 / res
        for name, fn in (("car", dens), ("sphere", sphere)):
            t0 = time.perf_counter()
            with torch.no_grad():
                sigma = density_grid(fn, res, 1.1, 1 << 18).numpy()
            t_grid = time.perf_counter() - t0
            for lib in libs:
                t0 = time.perf_counter()
                v, f = mc(lib, sigma, 10.0)
                t_mc = time.perf_counter() - t0
                q = quality(v, f)
                extra = ""
                if name == "sphere":
                    r = np.linalg.norm(-1.1 + (v + 0.5) * h, axis=1)
                    extra = f"  max |r - 0.6| {np.abs(r - 0.6).max() / h:.3f} voxel"
                print(f"{name:6s} {res:4d}^3  grid {t_grid:6.2f} s  {lib:8s} {t_mc:6.3f} s  "
                      f"V {q['V']:7d} F {q['F']:7d} euler {q['euler']:3d} open edges "
                      f"{q['open_edges']} degenerate {q['degenerate']}{extra}")
        t0 = time.perf_counter()
        mesh = M.export_mesh(model, model.codes[args.scene], resolution=res)
        print(f"whole coloured export at {res}^3: {time.perf_counter() - t0:.2f} s "
              f"({len(mesh.vertices)} vertices)")
    print(f"load average after {os.getloadavg()[0]:.2f}")
    if args.figure:
        figure(model, args.scene, args.figure, args.figure_res)


def read_ply(path: str) -> M.Mesh:
    """The PLY minissd writes, read back with plyfile (an independent reader)."""
    from plyfile import PlyData
    d = PlyData.read(path)
    v = d["vertex"].data
    cols = lambda *k: np.stack([v[c] for c in k], 1)                      # noqa: E731
    return M.Mesh(cols("x", "y", "z"), np.stack(d["face"].data["vertex_indices"]),
                  cols("nx", "ny", "nz"), cols("red", "green", "blue"))


def figure(model, scene: int, path: str, res: int):
    import math
    import tempfile
    from matplotlib.figure import Figure
    from minissd.data.cameras import CAMERA_RADIUS, look_at, sphere_to_xyz
    from minissd.testtime.generate import render_views
    with tempfile.TemporaryDirectory() as tmp:
        M.export_mesh(model, model.codes[scene], os.path.join(tmp, "car.ply"), resolution=res)
        mesh = read_ply(os.path.join(tmp, "car.ply"))
    views = ((20, 30), (20, 150), (55, -90))                             # (elevation, azimuth)
    fig = Figure(figsize=(7.5, 5))
    for j, (el, az) in enumerate(views):
        ax = fig.add_subplot(2, 3, j + 1, projection="3d")
        M.plot_mesh(mesh, ax, elev=el, azim=az)
        ax.set_axis_off()
        ax.set_title(f"mesh, az {az}, el {el}", fontsize=8)
        cam = look_at(sphere_to_xyz(CAMERA_RADIUS, math.radians(az), math.radians(el)))[None]
        ax = fig.add_subplot(2, 3, j + 4)
        ax.imshow(render_views(model, model.codes[scene], cam, res=96)[0].numpy())
        ax.set_axis_off()
        ax.set_title("NeRF render", fontsize=8)
    fig.suptitle(f"exported PLY ({res}^3, {len(mesh.faces)} faces) drawn by matplotlib, "
                 "and the NeRF it came from", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
