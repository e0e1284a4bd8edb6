"""SRN-format multi-view datasets (the format of the official loader,
lib/datasets/shapenet_srn.py `ShapeNetSRN`): reading (SRNDataset) and writing.

A dataset root holds one folder per scene (any folder with an `rgb/` inside):

    <scene>/rgb/000000.png     RGB(A) image; alpha is composited onto white
    <scene>/pose/000000.txt    16 numbers: 4x4 camera-to-world, OpenCV (x right, y down)
    <scene>/intrinsics.txt     "f cx cy 0" / "0. 0. 0." / "1." / "H W"
    <scene>/surface.npz        optional: points (P,3), colors (P,3) on the true surface

Loading applies, in order: intrinsics rescaled to the actual image size (some SRN
releases store K for 512x512 images that are 128x128 on disk), an optional resize to
`resolution` (area-averaged when shrinking; K scaled with it: with pixel centres at u + 0.5, (f, cx, cy) scale
exactly by the size ratio), and the normalisation of the official loader: translations
(and surface points) divided by 0.5, so objects fit [-1, 1]^3 and cameras sit at ~2.6.
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
import zipfile

from PIL import Image
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minissd.data.cameras import SRN_SCALE

SCALE = SRN_SCALE                             # raw SRN units per minissd unit (cameras.py)
IMAGE_EXT = (".png", ".jpg", ".jpeg")
MAX_IMAGE_SIDE = 8192                         # larger images are refused before decoding
MAX_TRANSLATION = 1e3                         # raw units; SRN cameras sit at ~1.3


def _is_regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _stems(folder, exts):
    """Sorted names of the regular files in folder ending in exts; folders, FIFOs and
    other special files are skipped (reading a FIFO would hang)."""
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(exts) and _is_regular(os.path.join(folder, f)))


def _skipped(folder, exts):
    """Entries of folder ending in exts that are not regular files."""
    return sorted(f for f in os.listdir(folder)
                  if f.lower().endswith(exts) and not _is_regular(os.path.join(folder, f)))


def read_intrinsics(path: str):
    """(f, cx, cy, (H, W) or None) from an SRN intrinsics.txt."""
    try:
        with open(path) as fh:
            lines = [ln.split() for ln in fh.read().splitlines() if ln.strip()]
        f, cx, cy = (float(x) for x in lines[0][:3])
        hw = tuple(int(float(x)) for x in lines[3][:2]) if len(lines) >= 4 else None
        if hw is not None and len(hw) != 2:
            raise ValueError("line 4 must be 'H W'")
    except (OSError, IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed SRN intrinsics (expected 'f cx cy 0', "
                         f"'0. 0. 0.', '1.', 'H W'): {e}") from None
    if not all(math.isfinite(v) for v in (f, cx, cy)) or f <= 0 or cx <= 0 or cy <= 0:
        raise ValueError(f"{path}: focal length and principal point must be positive, "
                         f"got f={f} cx={cx} cy={cy}")
    return f, cx, cy, hw


def read_pose(path: str) -> torch.Tensor:
    """A 4x4 camera-to-world matrix; must be 16 numbers forming a rigid transform."""
    try:
        with open(path) as fh:
            vals = [float(x) for x in fh.read().split()]
    except ValueError as e:
        raise ValueError(f"{path}: pose is not numeric: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read pose: {e}") from None
    if len(vals) != 16:
        raise ValueError(f"{path}: pose must have 16 numbers (4x4 c2w), found {len(vals)}")
    c2w = torch.tensor(vals, dtype=torch.float64).reshape(4, 4)
    R = c2w[:3, :3]
    if (not torch.isfinite(c2w).all()
            or (R.T @ R - torch.eye(3, dtype=R.dtype)).abs().max() > 1e-2
            or abs(torch.linalg.det(R) - 1) > 1e-2
            or (c2w[3] - torch.tensor([0.0, 0, 0, 1], dtype=R.dtype)).abs().max() > 1e-6):
        raise ValueError(f"{path}: pose is not a rigid transform (rotation must be "
                         f"orthonormal with det +1, last row 0 0 0 1)")
    if c2w[:3, 3].abs().max() > MAX_TRANSLATION:
        raise ValueError(f"{path}: camera translation {c2w[:3, 3].tolist()} is implausibly "
                         f"far (more than {MAX_TRANSLATION:g} units from the object)")
    return c2w.float()


def read_image(path: str, size: tuple | None = None) -> torch.Tensor:
    """(H, W, 3) float in [0, 1]; RGBA / LA are composited onto white, grayscale becomes
    RGB. The header is checked before decoding: at most MAX_IMAGE_SIDE pixels a side,
    and (H, W) == `size` when given."""
    try:
        img = Image.open(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read image: {e}") from None
    hw = (img.size[1], img.size[0])
    if max(hw) > MAX_IMAGE_SIDE:
        raise ValueError(f"{path}: image of {hw[1]}x{hw[0]} pixels is larger than "
                         f"{MAX_IMAGE_SIDE} a side")
    if size is not None and hw != tuple(size):
        raise ValueError(f"{path}: image size {hw} differs from the scene's first image "
                         f"{tuple(size)}")
    try:
        img.load()
    except Exception as e:
        raise ValueError(f"{path}: cannot read image: {e}") from None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    elif img.mode in ("RGB", "P", "L", "1"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    else:
        raise ValueError(f"{path}: expected an RGB(A) or grayscale(+alpha) image, got mode "
                         f"{img.mode}")
    return torch.from_numpy(np.ascontiguousarray(rgb))


def _mismatch(d, imgs, poses) -> str:
    """' (no pose for 000002.png, ...)': which files lack a partner, for error messages."""
    a = {os.path.splitext(f)[0]: f for f in imgs}
    b = {os.path.splitext(f)[0]: f for f in poses}
    bits = [f"no pose for rgb/{a[k]}" for k in sorted(set(a) - set(b))[:3]]
    bits += [f"no image for pose/{b[k]}" for k in sorted(set(b) - set(a))[:3]]
    bits += [f"{os.path.join(d, sub, f)} is not a regular file" for sub, exts in (("rgb", IMAGE_EXT), ("pose", (".txt",)))
             for f in _skipped(os.path.join(d, sub), exts)[:3]]
    return f" ({'; '.join(bits)})" if bits else ""


def write_scene(scene_dir, images, c2w, K, points, colors):
    """Write one scene in the SRN layout: images (V,H,W,3) in [0,1], c2w (V,4,4) and
    K (3,3) in raw SRN units, surface points (P,3) and colours (P,3)."""
    os.makedirs(os.path.join(scene_dir, "rgb"), exist_ok=True)
    os.makedirs(os.path.join(scene_dir, "pose"), exist_ok=True)
    H, W = images.shape[1:3]
    with open(os.path.join(scene_dir, "intrinsics.txt"), "w") as f:
        f.write(f"{K[0, 0]:.6f} {K[0, 2]:.6f} {K[1, 2]:.6f} 0.\n0. 0. 0.\n1.\n{H} {W}\n")
    imgs = (images * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    for v in range(len(imgs)):
        Image.fromarray(imgs[v]).save(os.path.join(scene_dir, "rgb", f"{v:06d}.png"))
        with open(os.path.join(scene_dir, "pose", f"{v:06d}.txt"), "w") as f:
            f.write(" ".join(f"{x:.9g}" for x in c2w[v].reshape(-1).tolist()) + "\n")
    np.savez(os.path.join(scene_dir, "surface.npz"), points=points.numpy().astype(np.float32),
             colors=colors.numpy().astype(np.float32))



def find_scenes(root: str):
    """Scene folders under root (sorted names): every sub-folder with an rgb/ folder.
    A root that itself has rgb/ is a single scene."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: dataset folder does not exist")
    if os.path.isdir(os.path.join(root, "rgb")):
        return [os.path.basename(os.path.normpath(root))], [root]
    names, dirs = [], []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        if os.path.isdir(os.path.join(d, "rgb")):
            names.append(name)
            dirs.append(d)
        elif os.path.isdir(os.path.join(d, "pose")) or os.path.isfile(os.path.join(d, "intrinsics.txt")):
            raise ValueError(f"{d}: scene folder has pose/ or intrinsics.txt but no rgb/ folder")
    if not names:
        raise ValueError(f"{root}: no scenes found (expected sub-folders with rgb/, pose/ "
                         f"and intrinsics.txt, the SRN layout)")
    return names, dirs


class SRNDataset:
    """Scenes of an SRN-format folder. ds[i] -> {"images": (V,H,W,3), "c2w": (V,4,4),
    "K": (V,3,3), "name": str, "view_ids": (V,)}; ds.stack() batches every scene.

    resolution: resize images to resolution x resolution (None keeps them).
    views: indices of the views to keep in every scene (None = all).
    normalize: divide translations by 0.5 (objects in [-1, 1]^3)."""

    def __init__(self, root, resolution=None, views=None, normalize=True):
        self.root, self.resolution, self.normalize = root, resolution, normalize
        self.views = None if views is None else [int(v) for v in views]
        self.names, self.dirs = find_scenes(root)
        self.files = [self._check_layout(d) for d in self.dirs]

    def _check_layout(self, d):
        """(image files, pose files) of one scene, after checking they correspond."""
        pose_dir = os.path.join(d, "pose")
        if not os.path.isdir(pose_dir):
            raise ValueError(f"{pose_dir}: missing pose/ folder")
        if not os.path.isfile(os.path.join(d, "intrinsics.txt")):
            raise ValueError(f"{os.path.join(d, 'intrinsics.txt')}: missing intrinsics file")
        imgs, poses = _stems(os.path.join(d, "rgb"), IMAGE_EXT), _stems(pose_dir, (".txt",))
        if len(imgs) != len(poses):
            raise ValueError(f"{d}: {len(imgs)} images in rgb/ but {len(poses)} poses in pose/"
                             + _mismatch(d, imgs, poses))
        if not imgs:
            raise ValueError(f"{os.path.join(d, 'rgb')}: no images")
        for a, b in zip(imgs, poses):
            if os.path.splitext(a)[0] != os.path.splitext(b)[0]:
                raise ValueError(f"{os.path.join(pose_dir, b)}: does not match image {a}")
        if self.views is not None and max(self.views, default=0) >= len(imgs):
            raise ValueError(f"{d}: asked for view {max(self.views)} but the scene has "
                             f"{len(imgs)} views")
        return imgs, poses

    def __len__(self):
        return len(self.names)

    def view_counts(self) -> list[int]:
        """Views of each scene, from the file lists (no image is read)."""
        return [len(imgs) for imgs, _ in self.files]

    def common_view_count(self) -> int:
        """The views every scene has; ValueError naming the first scene that differs
        from the most common count (training stacks all scenes with the same views)."""
        counts = self.view_counts()
        common = max(set(counts), key=lambda c: (counts.count(c), c == counts[0]))
        ref = self.dirs[counts.index(common)]
        for d, n in zip(self.dirs, counts):
            if n != common:
                others = counts.count(common) - 1
                raise ValueError(f"{d}: has {n} views, but {ref}{f' (and {others} more)' if others else ''} "
                                 f"has {common}; every training scene needs the same number of "
                                 "views")
        return common

    def fingerprint(self) -> str:
        """A short hash of the dataset: scene names, file names and sizes, poses and
        intrinsics (files are read, images are not decoded)."""
        h = hashlib.sha1()
        for name, d, (imgs, poses) in zip(self.names, self.dirs, self.files):
            h.update(f"scene {name}\n".encode())
            for rel in ([os.path.join("rgb", f) for f in imgs]
                        + [os.path.join("pose", f) for f in poses] + ["intrinsics.txt"]):
                path = os.path.join(d, rel)
                h.update(f"{rel} {os.path.getsize(path)}\n".encode())
                if not rel.startswith("rgb"):
                    with open(path, "rb") as fh:
                        h.update(fh.read())
        return h.hexdigest()[:12]

    def __getitem__(self, i):
        d, (imgs, poses) = self.dirs[i], self.files[i]
        ids = list(range(len(imgs))) if self.views is None else self.views
        f, cx, cy, hw = read_intrinsics(os.path.join(d, "intrinsics.txt"))
        images, c2ws, size = [], [], None
        for v in ids:
            path = os.path.join(d, "rgb", imgs[v])
            img = read_image(path, size)
            size = img.shape[:2]
            images.append(img)
            c2ws.append(read_pose(os.path.join(d, "pose", poses[v])))
        images, c2w = torch.stack(images), torch.stack(c2ws)      # (V,H,W,3), (V,4,4)
        K = self._intrinsics(f, cx, cy, hw, size, os.path.join(d, "intrinsics.txt"))
        if self.resolution is not None and size != (self.resolution, self.resolution):
            H, W = size
            # shrinking: average over each output pixel's footprint (a box filter, like
            # the supersampled renderer); enlarging: bilinear
            shrink = self.resolution < min(H, W)
            images = F.interpolate(images.permute(0, 3, 1, 2), size=(self.resolution,) * 2,
                                   mode="area" if shrink else "bilinear",
                                   align_corners=None if shrink else False)
            images = images.permute(0, 2, 3, 1).clamp(0, 1).contiguous()
            K[0] *= self.resolution / W
            K[1] *= self.resolution / H
        if self.normalize:
            c2w[:, :3, 3] /= SCALE
        return {"images": images.float(), "c2w": c2w.float(),
                "K": K.expand(len(ids), 3, 3).clone(), "name": self.names[i],
                "view_ids": torch.tensor(ids, dtype=torch.long)}

    @staticmethod
    def _intrinsics(f, cx, cy, hw, size, path):
        """K in pixels of the images on disk: scale by image size / the 'H W' line; if
        cx is then still far from the image centre (K written for another size and a
        wrong or missing 'H W' line), scale by image width / (2 cx)."""
        H, W = size
        sx, sy = (W / hw[1], H / hw[0]) if hw is not None and min(hw) > 0 else (1.0, 1.0)
        ratio = W / (2 * cx * sx)
        if not 0.67 < ratio < 1.5:                          # principal point far off-centre
            sx, sy = sx * ratio, sy * ratio
        if not (0 < cx * sx < W and 0 < cy * sy < H):
            raise ValueError(f"{path}: principal point ({cx * sx:.1f}, {cy * sy:.1f}) lies "
                             f"outside the {W}x{H} image")
        if not W / 100 < f * sx < 100 * W:
            raise ValueError(f"{path}: focal length {f * sx:.4g} px is implausible for a "
                             f"{W}x{H} image (field of view under 1 degree or over 179)")
        return torch.tensor([[f * sx, 0.0, cx * sx], [0.0, f * sy, cy * sy], [0.0, 0.0, 1.0]])

    def stack(self, progress=False):
        """Every scene batched: images (N,V,H,W,3), c2w (N,V,4,4), K (N,V,3,3), names.
        All scenes must have the same number of views and image size."""
        items = [self[i] for i in tqdm(range(len(self)), desc="loading", disable=not progress)]
        for it in items[1:]:
            if it["images"].shape != items[0]["images"].shape:
                raise ValueError(f"{os.path.join(self.root, it['name'])}: views/size "
                                 f"{tuple(it['images'].shape[:3])} differ from "
                                 f"{items[0]['name']}'s {tuple(items[0]['images'].shape[:3])}; "
                                 f"pass views=[...] or resolution=...")
        return {"images": torch.stack([it["images"] for it in items]),
                "c2w": torch.stack([it["c2w"] for it in items]),
                "K": torch.stack([it["K"] for it in items]),
                "names": [it["name"] for it in items]}

    def surface(self, i):
        """(points (P,3), colors (P,3)) on the true surface in loader coordinates, or None."""
        path = os.path.join(self.dirs[i], "surface.npz")
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as z:
                if "points" not in z or "colors" not in z:
                    raise ValueError(f"{path}: needs arrays 'points' and 'colors'")
                pts, cols = torch.from_numpy(z["points"]).float(), torch.from_numpy(z["colors"]).float()
        except (OSError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
            raise ValueError(f"{path}: damaged surface.npz, cannot read it ({e})") from None
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith(path) else
                             f"{path}: damaged surface.npz, cannot read it ({e})") from None
        if pts.ndim != 2 or pts.shape[1] != 3 or cols.shape != pts.shape:
            raise ValueError(f"{path}: points and colors must both be (P, 3)")
        return (pts / SCALE if self.normalize else pts), cols
