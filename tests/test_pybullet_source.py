"""make-data --source pybullet: real meshes in the SRN layout (skipped without pybullet)."""
import json

import numpy as np
import pytest

pytest.importorskip("pybullet")

from minissd.data import pybullet_source as pb  # noqa: E402
from minissd.cli import main  # noqa: E402
from minissd.data.srn import SRNDataset  # noqa: E402


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    out = tmp_path_factory.mktemp("pybullet") / "toys"
    pb.generate(str(out), "duck,mug,bunny", split="train", n_views=6, resolution=32, n_points=256,
                progress=False)
    return out


def _on_object(images):
    """Pixels that are not the white background: (V, H, W) bool."""
    return (images < 0.97).any(-1)


def test_loads_through_srn_dataset(toys):
    ds = SRNDataset(str(toys))
    assert len(ds) == 3 and sorted(ds.names) == ["bunny", "duck", "mug"]
    sc = ds[0]
    assert sc["images"].shape == (6, 32, 32, 3)
    dist = sc["c2w"][:, :3, 3].norm(dim=-1)
    assert np.allclose(dist.numpy(), 2 * pb.RADIUS, atol=1e-4)        # loader divides by 0.5
    pts, _ = ds.surface(0)
    assert pts.abs().max() <= 2 * pb.HALF_SIZE + 1e-4                  # fits [-0.9, 0.9]^3
    assert json.loads((toys / "dataset.json").read_text())["source"] == "pybullet"
    for i in range(len(ds)):                                           # every object is visible
        frac = _on_object(ds[i]["images"].numpy()).mean()
        assert 0.03 < frac < 0.8, (ds.names[i], frac)


def test_surface_points_project_onto_the_object_in_every_view(toys):
    """The written poses, K and surface points agree, as minissd reads them (OpenCV)."""
    ds = SRNDataset(str(toys))
    for i in range(len(ds)):
        sc, (pts, _) = ds[i], ds.surface(i)
        on = _on_object(sc["images"].numpy())
        K = sc["K"][0].numpy()
        for v in range(len(on)):
            c2w = sc["c2w"][v].numpy()
            xc = (pts.numpy() - c2w[:3, 3]) @ c2w[:3, :3]              # world -> camera
            uv = xc[:, :2] / xc[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
            assert (xc[:, 2] > 0).all()
            u, w = np.clip(uv[:, 0].astype(int), 0, 31), np.clip(uv[:, 1].astype(int), 0, 31)
            grown = on[v] | np.roll(on[v], 1, 0) | np.roll(on[v], -1, 0) | np.roll(on[v], 1, 1) \
                | np.roll(on[v], -1, 1)
            hit = grown[w, u].mean()
            assert hit > 0.9, (ds.names[i], v, hit)
            # and the object is where the points are: the mask's box is inside theirs (+2 px)
            ys, xs = np.nonzero(on[v])
            assert xs.min() >= uv[:, 0].min() - 2 and xs.max() <= uv[:, 0].max() + 2
            assert ys.min() >= uv[:, 1].min() - 2 and ys.max() <= uv[:, 1].max() + 2


def test_random_urdfs_train_and_test_are_disjoint():
    train = pb.object_files("random_urdfs", 20, "train", seed=3)
    test = pb.object_files("random_urdfs", 20, "test", seed=3)
    assert len(train) == len(test) == 20 and not set(train) & set(test)
    with pytest.raises(SystemExit, match="unknown"):
        pb.object_files("not-an-object")


def test_make_data_cli_route(tmp_path, capsys):
    out = tmp_path / "lego"
    assert main(["make-data", "--source", "pybullet", "--object", "lego", "--views", "3",
                 "--resolution", "16", "--split", "test", "--out", str(out)]) == 0
    assert "wrote 1 pybullet scenes" in capsys.readouterr().out
    assert SRNDataset(str(out))[0]["images"].shape == (3, 16, 16, 3)
