"""Real objects: textured meshes from pybullet_data rendered into the SRN layout.

    pip install -e ".[objects]"        # pybullet (zlib licence), which ships pybullet_data
    python -m minissd make-data --source pybullet --object duck --views 50 --split train --out data/duck
    python -m minissd make-data --source pybullet --object duck,teddy,mug --split test --views 24 --out data/toys_test
    python -m minissd make-data --source pybullet --object random_urdfs --scenes 64 --split train --out data/blobs

Each object is one scene, written exactly like minissd/data/procedural.py writes its
objects (rgb/, pose/, intrinsics.txt, surface.npz, a dataset.json), so `SRNDataset`,
training and evaluation read it unchanged. `random_urdfs` are pybullet's 1000 random
blobs; train and test draw disjoint ones (by --seed).

Geometry. pybullet worlds are Z-up, like minissd's (cameras.look_at: +z up), so no axis
change is needed: the object's visual mesh vertices (world frame) give its bounding box,
and world -> raw SRN coordinates is  x_srn = s (x_pb - c)  with c the box centre and s
scaling its largest half side to 0.45 (procedural objects: 0.44-0.48). A camera c2w in
SRN units (OpenCV: x right, y down, z forward) is rendered with pybullet's OpenGL view
matrix  inverse(c2w_pb diag(1, -1, -1, 1)),  c2w_pb = c2w with translation t / s + c, and
a projection of vertical field of view 2 atan(H / (2 f_y)) (principal point at the centre).

The renderer is pybullet's headless CPU ER_TINY_RENDERER, 2x supersampled; its
segmentation mask puts the object on a white background. One fixed world light, so an
object's colour does not change with the camera (what a NeRF expects). Every scene is
checked as it is written: the mesh vertices, projected with the written pose and K,
must land on the object's mask (`projection_agreement`), else generation stops.
"""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import torch
from tqdm.auto import tqdm

from minissd.data.cameras import SRN_CAMERA_RADIUS, intrinsics, random_sphere_poses, spiral_poses
from minissd.data.srn import write_scene

HALF_SIZE = 0.45            # largest half side of an object, raw SRN units
RADIUS = SRN_CAMERA_RADIUS            # camera distance, raw SRN units (what is written to disk)
FORMAT = 1
LIGHT_DIRECTION = (0.5, 0.3, 1.0)
# name -> file in pybullet_data (a URDF, or a bare .obj); licences: see docs/real_data.md
OBJECTS = {
    "duck": "duck_vhacd.urdf",
    "teddy": "teddy_vhacd.urdf",
    "mug": "objects/mug.urdf",
    "lego": "lego/lego.urdf",
    "bunny": "bunny.obj",
    "soccerball": "soccerball.urdf",
    "table": "table/table.urdf",
}
RANDOM_URDFS = "random_urdfs"
# bare meshes come without a URDF frame; bunny.obj is Y-up (the Stanford scan): stand it up
BARE_MESH_ROTATION = {"bunny.obj": (math.pi / 2, 0.0, 0.0)}


def _pybullet():
    try:
        import pybullet
        import pybullet_data
    except ImportError:
        raise SystemExit("--source pybullet needs the pybullet package: pip install pybullet "
                         "(or pip install -e \".[objects]\")") from None
    return pybullet, pybullet_data


def object_files(names: str, n_scenes: int = 32, split: str = "train", seed: int = 0) -> dict:
    """{scene name: file} for "duck", "duck,teddy", or "random_urdfs" (n_scenes of them;
    train and test take disjoint ones from one seeded permutation)."""
    _, pybullet_data = _pybullet()
    root = pybullet_data.getDataPath()
    if names == RANDOM_URDFS:
        ids = sorted(d for d in os.listdir(os.path.join(root, RANDOM_URDFS)) if d.isdigit())
        random.Random(seed).shuffle(ids)
        if n_scenes > len(ids) // 2:
            raise SystemExit(f"--object random_urdfs: at most {len(ids) // 2} scenes per split")
        pick = ids[:n_scenes] if split == "train" else ids[::-1][:n_scenes]
        return {f"urdf_{i}": os.path.join(root, RANDOM_URDFS, i, f"{i}.urdf") for i in pick}
    out = {}
    for name in names.split(","):
        if name not in OBJECTS:
            raise SystemExit(f"--object {name}: unknown; choose from {', '.join(OBJECTS)} "
                             f"or {RANDOM_URDFS}")
        out[name] = os.path.join(root, OBJECTS[name])
    return out


def load_body(p, path: str, client: int) -> int:
    """A fixed body for a URDF, or a visual-only body for a bare mesh file."""
    if path.endswith(".urdf"):
        return p.loadURDF(path, useFixedBase=True, physicsClientId=client)
    vis = p.createVisualShape(p.GEOM_MESH, fileName=path, physicsClientId=client)
    up = BARE_MESH_ROTATION.get(os.path.basename(path), (0.0, 0.0, 0.0))
    return p.createMultiBody(baseVisualShapeIndex=vis, baseOrientation=p.getQuaternionFromEuler(up),
                             physicsClientId=client)


def _obj_vertices(path: str) -> np.ndarray:
    with open(path, errors="replace") as f:
        v = [line.split()[1:4] for line in f if line.startswith("v ")]
    return np.asarray(v, dtype=np.float64).reshape(-1, 3)


def _rot(q) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def visual_vertices(p, body: int, client: int) -> np.ndarray:
    """World-frame vertices (M, 3) of every mesh visual of the body.

    A visual's local frame is relative to its link frame; the base link frame is the
    base's centre-of-mass pose composed with the inverse of its local inertial frame."""
    pts = []
    for vs in p.getVisualShapeData(body, physicsClientId=client):
        link, geom, scale, fname, pos, orn = vs[1], vs[2], vs[3], vs[4], vs[5], vs[6]
        if geom != p.GEOM_MESH or not fname:
            continue
        v = _obj_vertices(fname.decode() if isinstance(fname, bytes) else fname) * np.asarray(scale)
        if link == -1:
            com_pos, com_orn = p.getBasePositionAndOrientation(body, physicsClientId=client)
            inertial_pos, inertial_orn = p.getDynamicsInfo(body, -1, physicsClientId=client)[3:5]
            frame_pos, frame_orn = p.multiplyTransforms(
                com_pos, com_orn, *p.invertTransform(inertial_pos, inertial_orn))
        else:
            frame_pos, frame_orn = p.getLinkState(body, link, physicsClientId=client)[4:6]
        wpos, worn = p.multiplyTransforms(frame_pos, frame_orn, pos, orn)
        pts.append(v @ _rot(worn).T + np.asarray(wpos))
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def _gl_view_matrix(c2w_pb: np.ndarray) -> list:
    """OpenCV camera-to-world -> OpenGL world-to-camera, column-major (pybullet's order)."""
    c2w_gl = c2w_pb @ np.diag([1.0, -1.0, -1.0, 1.0])
    return np.linalg.inv(c2w_gl).flatten(order="F").tolist()


def render_with_pybullet(p, body, client, c2w, K, res, centre, scale, supersample=2):
    """Images (V, res, res, 3) in [0,1] on white and object masks (V, res, res) in [0,1]
    for SRN-unit cameras c2w (V, 4, 4)."""
    fy = float(K[1, 1]) * supersample
    R = res * supersample
    fov = math.degrees(2 * math.atan(R / (2 * fy)))
    proj = p.computeProjectionMatrixFOV(fov, 1.0, 0.05 / scale, 4.0 / scale)
    images, masks = [], []
    for c in np.asarray(c2w, dtype=np.float64):
        c_pb = c.copy()
        c_pb[:3, 3] = c[:3, 3] / scale + centre
        _, _, rgb, _, seg = p.getCameraImage(
            R, R, _gl_view_matrix(c_pb), proj, renderer=p.ER_TINY_RENDERER,
            lightDirection=LIGHT_DIRECTION, shadow=0, physicsClientId=client)
        rgb = np.asarray(rgb, dtype=np.float32).reshape(R, R, 4)[..., :3] / 255
        m = (np.asarray(seg).reshape(R, R) == body).astype(np.float32)
        img = rgb * m[..., None] + (1 - m[..., None])                   # white background
        images.append(img.reshape(res, supersample, res, supersample, 3).mean((1, 3)))
        masks.append(m.reshape(res, supersample, res, supersample).mean((1, 3)))
    return np.stack(images), np.stack(masks)


def project(points, c2w, K) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV projection of world points (M, 3) into one camera: pixel coords (M, 2), depth."""
    R, t = c2w[:3, :3], c2w[:3, 3]
    xc = (points - t) @ R                                               # R^T (X - t)
    z = xc[:, 2]
    uv = xc[:, :2] / np.maximum(z[:, None], 1e-9) * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    return uv, z


def projection_agreement(points, c2w, K, masks, tolerance_px: int = 1) -> float:
    """The smallest (over views) fraction of points in front of the camera and inside the
    image whose pixel (or a neighbour within tolerance_px) is on the object's mask."""
    worst = 1.0
    for c, m in zip(np.asarray(c2w), np.asarray(masks)):
        H, W = m.shape
        on = m > 0
        for _ in range(tolerance_px):                                   # dilate the mask
            grown = on.copy()
            grown[1:] |= on[:-1]; grown[:-1] |= on[1:]
            grown[:, 1:] |= on[:, :-1]; grown[:, :-1] |= on[:, 1:]
            on = grown
        uv, z = project(points, c, K)
        ok = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        if ok.sum() == 0:
            return 0.0
        u, v = uv[ok, 0].astype(int), uv[ok, 1].astype(int)
        worst = min(worst, float(on[v, u].mean()))
    return worst


def generate(out_dir, objects="duck", split="train", n_scenes=32, n_views=50, resolution=64,
             seed=0, n_points=2048, progress=True) -> str:
    """Render pybullet_data objects into out_dir in the SRN layout (one scene each)."""

    p, _ = _pybullet()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = object_files(objects, n_scenes, split, seed)
    K = intrinsics(resolution)
    os.makedirs(out_dir, exist_ok=True)
    client = p.connect(p.DIRECT)
    try:
        for i, (name, path) in enumerate(tqdm(files.items(), desc=f"pybullet/{split}",
                                               disable=not progress)):
            p.resetSimulation(physicsClientId=client)
            body = load_body(p, path, client)
            verts = visual_vertices(p, body, client)
            if len(verts) == 0:
                raise RuntimeError(f"{path}: no mesh vertices found")
            lo, hi = verts.min(0), verts.max(0)
            centre, scale = (lo + hi) / 2, HALF_SIZE / float((hi - lo).max() / 2)
            g = torch.Generator().manual_seed(seed * 1000003 + i + (0 if split == "train" else 500000))
            c2w = (random_sphere_poses(n_views, RADIUS, generator=g) if split == "train"
                   else spiral_poses(n_views, RADIUS))
            images, masks = render_with_pybullet(p, body, client, c2w.numpy(), K.numpy(), resolution,
                                         centre, scale)
            pts = (verts - centre) * scale                              # raw SRN units
            agree = projection_agreement(pts, c2w.numpy(), K.numpy(), masks)
            if agree < 0.95:
                raise RuntimeError(f"{name}: only {agree:.0%} of the mesh vertices project onto "
                                   "the rendered mask: the camera conversion is wrong")
            pick = np.random.default_rng(i).choice(len(pts), n_points, replace=len(pts) < n_points)
            rgba = p.getVisualShapeData(body, physicsClientId=client)[0][7]
            colors = np.tile(np.asarray(rgba[:3], np.float32), (n_points, 1))
            write_scene(os.path.join(out_dir, name), torch.from_numpy(images).float(), c2w, K,
                        torch.from_numpy(pts[pick]).float(), torch.from_numpy(colors))
    finally:
        p.disconnect(physicsClientId=client)
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        json.dump(dict(source="pybullet", objects=objects, scenes=list(files), split=split,
                       n_views=n_views, resolution=resolution, seed=seed, format=FORMAT), f, indent=1)
    return out_dir
