"""Procedural SRN-style datasets: random cars, chairs and tables, rendered exactly.

An object is a random assembly of parts (raycast.Parts: boxes, cylinders, spheres):
    cars   = body + glass cabin (+ roof) + 4 dark wheels with hubcaps + lights
    chairs = seat + solid or slatted back + 4 legs or a pedestal (+ arms)
    tables = rectangular or round top + 4 legs, a pedestal or trestles (+ shelf)
with random proportions, part counts and colours, centred and scaled to fit about
[-0.5, 0.5]^3 with z up. Views are rendered by exact ray casting (raycast.render, never
the NeRF renderer) and written in the SRN layout (what the official loader reads,
lib/datasets/shapenet_srn.py `ShapeNetSRN`):

    <out>/<scene>/rgb/000000.png  pose/000000.txt  intrinsics.txt  surface.npz

Train scenes get random views on the sphere, test scenes views on a spiral; the split
is part of every scene's seed, so test objects are never seen in training.
    python -m minissd make-data --category cars --split train --scenes 64 --views 50
"""
from __future__ import annotations

import colorsys
import json
import os
import random
import shutil
import uuid
import zlib

import numpy as np
import torch
from tqdm.auto import tqdm

from minissd.config import cache_dir
from minissd.data.cameras import SRN_CAMERA_RADIUS, intrinsics, random_sphere_poses, spiral_poses
from minissd.data.raycast import Parts, render, sample_surface
from minissd.data.srn import write_scene

CATEGORIES = ("cars", "chairs", "tables")
RADIUS = SRN_CAMERA_RADIUS            # camera distance, raw SRN units (what is written to disk)
FORMAT = 1                                   # bump when the generated images change


def _hsv(h, s, v):
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def make_car(rng: random.Random) -> Parts:
    """Body, glass cabin with a roof, four dark wheels with hubcaps, lights."""
    p, U = Parts(), rng.uniform
    L = U(0.75, 1.0)
    W = L * U(0.38, 0.5)
    r, tw = U(0.07, 0.11), U(0.025, 0.045)            # wheel radius, half tyre width
    zb, hb = r * U(0.5, 0.9), U(0.11, 0.2)             # body bottom and height
    body = _hsv(rng.random(), U(0.5, 0.95), U(0.45, 0.95)) if rng.random() < 0.8 \
        else (U(0.75, 0.92),) * 3                        # mostly colourful, some silver
    p.box((0, 0, zb + hb / 2), (L / 2, W / 2, hb / 2), body)
    Lc, hc = L * U(0.35, 0.75), U(0.09, 0.17)          # cabin: coupe ... van
    xc = U(-0.3, 0.3) * (L - Lc) / 2
    glass = (U(0.1, 0.2), U(0.13, 0.23), U(0.2, 0.32))
    p.box((xc, 0, zb + hb + hc / 2), (Lc / 2, W * U(0.4, 0.47), hc / 2), glass)
    if rng.random() < 0.7:                               # roof in body colour
        p.box((xc, 0, zb + hb + hc), (Lc / 2 * 0.92, W * 0.45, 0.012), body)
    tyre, hub = (U(0.05, 0.12),) * 3, (U(0.6, 0.85),) * 3
    xw = L / 2 - r * U(1.1, 1.7)
    for sx in (-1, 1):
        for sy in (-1, 1):
            p.cyl((sx * xw, sy * (W / 2 - tw * 0.5), r), r, tw, tyre, axis=1)
            p.cyl((sx * xw, sy * (W / 2 - tw * 0.5), r), r * 0.5, tw + 0.006, hub, axis=1)
    for sy in (-1, 1):
        p.sphere((L / 2, sy * W * 0.32, zb + hb * 0.65), U(0.022, 0.032), (1.0, 0.95, 0.7))
        p.sphere((-L / 2, sy * W * 0.34, zb + hb * 0.7), U(0.018, 0.026), (0.8, 0.05, 0.05))
    return p


def make_chair(rng: random.Random) -> Parts:
    """Seat, back (solid or slats), four legs or a pedestal, optional arms."""
    p, U = Parts(), rng.uniform
    sw, sd, st, sh = U(0.35, 0.55), U(0.35, 0.5), U(0.03, 0.07), U(0.35, 0.5)
    wood = _hsv(U(0.05, 0.1), U(0.4, 0.7), U(0.3, 0.75))
    fabric = _hsv(rng.random(), U(0.2, 0.8), U(0.3, 0.9))
    seat = fabric if rng.random() < 0.6 else wood
    frame = rng.choice([wood, (0.18, 0.18, 0.19), (U(0.6, 0.8),) * 3])
    p.box((0, 0, sh - st / 2), (sd / 2, sw / 2, st / 2), seat)
    if rng.random() < 0.75:                              # four legs, square or round
        lt, inset, round_legs = U(0.015, 0.035), U(0.0, 0.04), rng.random() < 0.4
        for sx in (-1, 1):
            for sy in (-1, 1):
                c = (sx * (sd / 2 - lt - inset), sy * (sw / 2 - lt - inset), (sh - st) / 2)
                if round_legs:
                    p.cyl(c, lt, (sh - st) / 2, frame)
                else:
                    p.box(c, (lt, lt, (sh - st) / 2), frame)
    else:                                                # office chair: column and base
        p.cyl((0, 0, sh / 2), U(0.02, 0.035), sh / 2 - 0.02, frame)
        p.cyl((0, 0, 0.015), U(0.18, 0.26), 0.015, frame)
    bh, bt = U(0.3, 0.55), U(0.025, 0.05)
    xb, top = -sd / 2 + bt / 2, sh + bh
    if rng.random() < 0.6:                               # solid back
        p.box((xb, 0, sh + bh / 2), (bt / 2, sw / 2, bh / 2), seat)
    else:                                                # slats under a top rail
        n, rail = rng.randint(2, 5), U(0.04, 0.08)
        p.box((xb, 0, top - rail / 2), (bt / 2, sw / 2, rail / 2), frame)
        for y in np.linspace(-sw / 2 + 0.02, sw / 2 - 0.02, n):
            p.box((xb, y, sh + (bh - rail) / 2), (bt / 2, 0.015, (bh - rail) / 2), frame)
    if rng.random() < 0.35:                              # arms on two posts
        ah, at = U(0.15, 0.25), U(0.02, 0.04)
        for sy in (-1, 1):
            p.box((0, sy * (sw / 2 + at), sh + ah), (sd / 2, at, 0.015), frame)
            p.box((sd / 2 - at, sy * (sw / 2 + at), sh + ah / 2), (at, at * 0.8, ah / 2), frame)
    return p


def make_table(rng: random.Random) -> Parts:
    """Rectangular or round top on four legs, a pedestal or two trestles; maybe a shelf."""
    p, U = Parts(), rng.uniform
    L, tt, h = U(0.6, 1.0), U(0.025, 0.07), U(0.35, 0.7)
    W = L * U(0.5, 1.0)
    top = rng.choice([_hsv(U(0.05, 0.1), U(0.3, 0.7), U(0.35, 0.85)), (0.93, 0.93, 0.9),
                      (0.2, 0.2, 0.21), _hsv(rng.random(), U(0.3, 0.7), U(0.5, 0.9))])
    legs = rng.choice([top, (0.18, 0.18, 0.19), (U(0.6, 0.8),) * 3])
    round_top = rng.random() < 0.3
    if round_top:
        W = L
        p.cyl((0, 0, h - tt / 2), L / 2, tt / 2, top)
    else:
        p.box((0, 0, h - tt / 2), (L / 2, W / 2, tt / 2), top)
    style = rng.choice(["legs", "legs", "pedestal", "trestle"])
    lz = (h - tt) / 2
    if style == "legs":
        lt = U(0.015, 0.04)
        if round_top:                                    # corners stay inside the disc
            fx = fy = L / 2 * U(0.45, 0.6)
        else:
            fx, fy = L / 2 - lt - U(0, 0.05), W / 2 - lt - U(0, 0.05)
        for sx in (-1, 1):
            for sy in (-1, 1):
                p.box((sx * fx, sy * fy, lz), (lt, lt, lz), legs)
        if rng.random() < 0.35:                          # lower shelf
            p.box((0, 0, h * U(0.15, 0.3)), (fx + lt, fy + lt, 0.012), top)
    elif style == "pedestal":
        p.cyl((0, 0, lz), U(0.03, 0.07), lz, legs)
        p.cyl((0, 0, 0.015), min(L, W) * U(0.25, 0.4), 0.015, legs)
    else:                                                # two slab ends along x
        for sx in (-1, 1):
            p.box((sx * (L / 2 - 0.08), 0, lz), (U(0.015, 0.03), W / 2 * 0.8, lz), legs)
    return p


MAKERS = {"cars": make_car, "chairs": make_chair, "tables": make_table}


def make_object(category: str, seed: int) -> Parts:
    """A random object of `category`, centred, largest half side <= 0.48 (raw SRN units)."""
    if category not in MAKERS:
        raise ValueError(f"unknown category {category!r}; choose from {list(MAKERS)}")
    rng = random.Random(seed)
    return MAKERS[category](rng).normalize(rng.uniform(0.44, 0.48))


# ----------------------------------------------------------------------- datasets
def scene_seed(category: str, split: str, seed: int, i: int) -> int:
    """A seed per scene; the split is part of it so test objects are unseen."""
    return zlib.crc32(f"{category}/{split}/{seed}/{i}".encode())


def generate(out_dir, category="cars", split="train", n_scenes=32, n_views=50, resolution=64,
             seed=0, progress=True, n_points=2048):
    """Render n_scenes objects of `category` into out_dir (SRN layout). Returns out_dir."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    K = intrinsics(resolution)
    os.makedirs(out_dir, exist_ok=True)
    for i in tqdm(range(n_scenes), desc=f"{category}/{split}", disable=not progress):
        s = scene_seed(category, split, seed, i)
        parts, g = make_object(category, s), torch.Generator().manual_seed(s)
        c2w = (random_sphere_poses(n_views, RADIUS, generator=g) if split == "train"
               else spiral_poses(n_views, RADIUS))
        images = render(parts, c2w, K, resolution, resolution)
        points, colors = sample_surface(parts, n_points, g)
        write_scene(os.path.join(out_dir, f"{category}_{i:04d}"), images, c2w, K, points, colors)
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        json.dump(dict(category=category, split=split, n_scenes=n_scenes, n_views=n_views,
                       resolution=resolution, seed=seed, format=FORMAT), f, indent=1)
    return out_dir


def ensure_dataset(category="cars", split="train", n_scenes=32, n_views=50, resolution=64,
                   seed=0, progress=True) -> str:
    """The cached dataset for these arguments, generated once (tmp dir + atomic rename)."""
    key = f"{category}_{split}_n{n_scenes}_v{n_views}_r{resolution}_s{seed}_f{FORMAT}"
    final = os.path.join(cache_dir(), "data", key)
    if os.path.isdir(final):
        return final
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    generate(tmp, category, split, n_scenes, n_views, resolution, seed, progress)
    try:
        os.rename(tmp, final)
    except OSError:                                      # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(final):
            raise
    return final
