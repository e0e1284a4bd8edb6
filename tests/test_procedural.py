"""Procedural SRN-style data: objects, determinism, splits, layout, cache, CLI."""
import os

from PIL import Image
import numpy as np
import pytest
import torch

from minissd.cli import main
from minissd.data import procedural as P
from minissd.data.cameras import intrinsics, spiral_poses


def _read(scene, v):
    return np.asarray(Image.open(os.path.join(scene, "rgb", f"{v:06d}.png")))


def _pose(scene, v):
    with open(os.path.join(scene, "pose", f"{v:06d}.txt")) as f:
        return torch.tensor([float(x) for x in f.read().split()]).reshape(4, 4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("proc")
    for cat in P.CATEGORIES:
        P.generate(str(root / cat), cat, "train", n_scenes=2, n_views=3, resolution=24,
                   seed=0, progress=False)
    return root


def test_generate_is_deterministic_and_splits_differ(tmp_path):
    args = dict(category="cars", n_scenes=1, n_views=2, resolution=16, seed=3, progress=False)
    P.generate(str(tmp_path / "a"), split="train", **args)
    P.generate(str(tmp_path / "b"), split="train", **args)
    P.generate(str(tmp_path / "c"), split="test", **args)
    P.generate(str(tmp_path / "d"), split="train", **{**args, "seed": 4})
    sa, sb, sc, sd = (str(tmp_path / x / "cars_0000") for x in "abcd")
    assert np.array_equal(_read(sa, 0), _read(sb, 0))
    assert torch.equal(_pose(sa, 1), _pose(sb, 1))
    pa, pc, pd = (np.load(os.path.join(s, "surface.npz"))["points"] for s in (sa, sc, sd))
    assert not np.allclose(pa, pc) and not np.allclose(pa, pd)   # new objects


def test_images_white_corners_object_centre(tiny):
    for cat in P.CATEGORIES:
        for s in range(2):
            scene = str(tiny / cat / f"{cat}_{s:04d}")
            for v in range(3):
                img = _read(scene, v)
                assert img.shape == (24, 24, 3) and img.dtype == np.uint8
                for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
                    assert (corner == 255).all(), f"{scene} view {v}: corner not white"
                centre = img[9:15, 9:15].reshape(-1, 3)
                assert (centre < 250).any(axis=1).mean() > 0.3, f"{scene} view {v}: empty centre"


def test_layout_poses_and_surface(tiny):
    scene = str(tiny / "cars" / "cars_0001")
    with open(os.path.join(scene, "intrinsics.txt")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 4 and lines[1].split() == ["0.", "0.", "0."] and lines[3] == "24 24"
    f_, cx, cy, zero = map(float, lines[0].split())
    assert cx == cy == 12 and zero == 0 and abs(f_ - intrinsics(24)[0, 0].item()) < 1e-3
    for v in range(3):
        c2w = _pose(scene, v)
        assert abs(c2w[:3, 3].norm() - P.RADIUS) < 1e-5
        R = c2w[:3, :3]
        assert torch.allclose(R.T @ R, torch.eye(3), atol=1e-5)
    z = np.load(os.path.join(scene, "surface.npz"))
    assert z["points"].shape == (2048, 3) and z["colors"].shape == (2048, 3)
    assert np.abs(z["points"]).max() <= 0.5 and 0 <= z["colors"].min() and z["colors"].max() <= 1


def test_test_split_uses_spiral(tmp_path):
    P.generate(str(tmp_path), "tables", "test", n_scenes=1, n_views=5, resolution=16, seed=0,
               progress=False)
    poses = torch.stack([_pose(str(tmp_path / "tables_0000"), v) for v in range(5)])
    assert torch.allclose(poses, spiral_poses(5, P.RADIUS), atol=1e-6)


def test_make_data_cli_and_cache(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    rc = main(["make-data", "--category", "tables", "--split", "train", "--scenes", "2",
               "--views", "2", "--resolution", "16", "--seed", "1", "--out", str(out)])
    assert rc == 0 and "wrote 2 tables" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["dataset.json", "tables_0000", "tables_0001"]
    assert len(os.listdir(out / "tables_0001" / "rgb")) == 2
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    path = P.ensure_dataset("cars", "train", n_scenes=1, n_views=2, resolution=16, seed=0,
                            progress=False)
    stamp = os.path.getmtime(os.path.join(path, "dataset.json"))
    assert P.ensure_dataset("cars", "train", 1, 2, 16, 0, progress=False) == path
    assert os.path.getmtime(os.path.join(path, "dataset.json")) == stamp   # not regenerated
    assert not [d for d in os.listdir(os.path.dirname(path)) if ".tmp-" in d]


def test_objects_fit_and_are_centred():
    for cat in P.CATEGORIES:
        for s in range(10):
            _, c, ext, _, _ = P.make_object(cat, s).tensors()
            lo, hi = (c - ext).amin(0), (c + ext).amax(0)
            assert hi.max() <= 0.481 and lo.min() >= -0.481
            assert (lo + hi).abs().max() < 1e-5
