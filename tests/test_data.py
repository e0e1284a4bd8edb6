"""SRNDataset: round trip from make-data, normalisation, resizing, and clear errors."""
import os
import shutil

from PIL import Image
import numpy as np
import pytest
import torch

from minissd.data import procedural as P
from minissd.data.cameras import intrinsics
from minissd.data.srn import SRNDataset


@pytest.fixture
def copy(made, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(made, dst)
    return dst


def test_round_trip_shapes_and_normalisation(made):
    ds = SRNDataset(made)
    assert len(ds) == 2 and ds.names == ["cars_0000", "cars_0001"]
    it = ds[1]
    assert it["images"].shape == (4, 16, 16, 3) and it["images"].dtype == torch.float32
    assert it["c2w"].shape == (4, 4, 4) and it["K"].shape == (4, 3, 3)
    assert it["name"] == "cars_0001" and it["view_ids"].tolist() == [0, 1, 2, 3]
    # cameras at 1.3 / 0.5 = 2.6, rotations untouched
    assert torch.allclose(it["c2w"][:, :3, 3].norm(dim=-1), torch.full((4,), 2.6), atol=1e-4)
    raw = SRNDataset(made, normalize=False)[1]
    assert torch.allclose(raw["c2w"][:, :3, 3] * 2, it["c2w"][:, :3, 3])
    assert torch.allclose(it["K"][0], intrinsics(16), atol=1e-4)
    # images equal the PNGs on disk
    png = np.asarray(Image.open(os.path.join(made, "cars_0001", "rgb", "000002.png")))
    assert torch.allclose(it["images"][2], torch.from_numpy(png.copy()).float() / 255)
    s = ds.stack()
    assert s["images"].shape == (2, 4, 16, 16, 3) and s["c2w"].shape == (2, 4, 4, 4)
    assert s["K"].shape == (2, 4, 3, 3) and s["names"] == ds.names
    assert all(v.dtype == torch.float32 for k, v in s.items() if k != "names")
    pts, cols = ds.surface(0)
    assert pts.shape == (2048, 3) and cols.shape == (2048, 3)
    assert pts.abs().max() <= 1.0 and pts.abs().max() > 0.7     # in [-1, 1]^3, filling it


def test_views_subset_and_resize(made):
    full = SRNDataset(made)[0]
    ds = SRNDataset(made, resolution=8, views=[3, 1])
    it = ds[0]
    assert it["images"].shape == (2, 8, 8, 3) and it["view_ids"].tolist() == [3, 1]
    assert torch.allclose(it["c2w"], full["c2w"][[3, 1]])
    K16, K8 = full["K"][0], it["K"][0]
    assert torch.allclose(K8[:2], K16[:2] / 2) and K8[2, 2] == 1
    # shrinking by 2 averages 2x2 pixel blocks
    ref = full["images"][3].reshape(8, 2, 8, 2, 3).mean((1, 3))
    assert torch.allclose(it["images"][0], ref, atol=1e-6)
    up = SRNDataset(made, resolution=32, views=[0])[0]
    assert up["images"].shape == (1, 32, 32, 3) and torch.allclose(up["K"][0, :2], K16[:2] * 2)
    with pytest.raises(ValueError, match="view 9"):
        SRNDataset(made, views=[9])


def test_alpha_composited_on_white(copy):
    path = os.path.join(copy, "cars_0000", "rgb", "000000.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255                                  # red ...
    rgba[:8, :, 3] = 255                                # ... opaque on top, transparent below
    Image.fromarray(rgba, "RGBA").save(path)
    img = SRNDataset(copy)[0]["images"][0]
    assert torch.allclose(img[:8], torch.tensor([1.0, 0, 0]).expand(8, 16, 3))
    assert torch.allclose(img[8:], torch.ones(8, 16, 3))


def test_real_srn_intrinsics_for_512_are_rescaled(copy):
    scene = os.path.join(copy, "cars_0000")
    f16 = intrinsics(16)[0, 0].item()
    with open(os.path.join(scene, "intrinsics.txt"), "w") as f:   # K for 512 x 512
        f.write(f"{f16 * 32} 256. 256. 0.\n0. 0. 0.\n1.\n512 512\n")
    K = SRNDataset(copy)[0]["K"][0]
    assert torch.allclose(K, intrinsics(16), atol=1e-3)
    with open(os.path.join(scene, "intrinsics.txt"), "w") as f:   # stale 'H W' line
        f.write(f"{f16 * 32} 256. 256. 0.\n0. 0. 0.\n1.\n16 16\n")
    assert torch.allclose(SRNDataset(copy)[0]["K"][0], intrinsics(16), atol=1e-3)


def _remove(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


BAD = {   # case -> (how to break scene cars_0001, the path the error must name, on load?)
    "missing rgb": (lambda s: _remove(os.path.join(s, "rgb")), "", False),
    "missing pose": (lambda s: _remove(os.path.join(s, "pose")), "pose", False),
    "missing intrinsics": (lambda s: _remove(os.path.join(s, "intrinsics.txt")), "intrinsics.txt", False),
    "counts differ": (lambda s: _remove(os.path.join(s, "pose", "000003.txt")), "", False),
    "pose 15 numbers": (lambda s: _write(os.path.join(s, "pose", "000002.txt"), " ".join(["1"] * 15)),
                        "pose/000002.txt", True),
    "pose not numeric": (lambda s: _write(os.path.join(s, "pose", "000002.txt"), "a " * 16),
                         "pose/000002.txt", True),
    "pose not rigid": (lambda s: _write(os.path.join(s, "pose", "000001.txt"),
                                        "2 0 0 0 0 2 0 0 0 0 2 0 0 0 0 1"), "pose/000001.txt", True),
    "intrinsics malformed": (lambda s: _write(os.path.join(s, "intrinsics.txt"), "f cx\n"),
                             "intrinsics.txt", True),
    "cmyk image": (lambda s: (os.remove(os.path.join(s, "rgb", "000001.png")),
                              Image.new("CMYK", (16, 16)).save(os.path.join(s, "rgb", "000001.jpg"))),
                   "rgb/000001.jpg", True),       # grayscale (+alpha) is accepted (test_robustness)
    "not an image": (lambda s: _write(os.path.join(s, "rgb", "000001.png"), "hello"),
                     "rgb/000001.png", True),
    "size mismatch": (lambda s: Image.new("RGB", (12, 16)).save(os.path.join(s, "rgb", "000003.png")),
                      "rgb/000003.png", True),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_name_the_file(copy, case):
    breaker, rel, on_load = BAD[case]
    scene = os.path.join(copy, "cars_0001")
    breaker(scene)
    expected = os.path.join(scene, rel) if rel else scene
    with pytest.raises(ValueError) as err:
        ds = SRNDataset(copy)
        assert on_load, "constructor should already have failed"
        ds[1]
    assert expected.rstrip("/") in str(err.value), str(err.value)


def test_empty_root_and_mixed_scenes(tmp_path, made):
    with pytest.raises(ValueError, match="no scenes found"):
        SRNDataset(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        SRNDataset(str(tmp_path / "nope"))
    one = SRNDataset(os.path.join(made, "cars_0000"))          # a single scene folder
    assert one.names == ["cars_0000"] and one[0]["images"].shape[0] == 4
    other = str(tmp_path / "other")
    P.generate(other, "cars", "train", n_scenes=1, n_views=4, resolution=16, seed=0, progress=False)
    P.generate(str(tmp_path / "x"), "cars", "train", 1, 3, 16, 0, progress=False)
    shutil.move(str(tmp_path / "x" / "cars_0000"), os.path.join(other, "cars_0009"))
    with pytest.raises(ValueError, match="cars_0009"):
        SRNDataset(other).stack()
    assert SRNDataset(other, views=[0, 2]).stack()["images"].shape[:2] == (2, 2)
