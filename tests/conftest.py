"""Fixtures shared by several test files."""
import pytest

from minissd.data import procedural


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """A tiny procedural dataset (2 cars x 4 views at 16 px) in the SRN layout. Read-only:
    a test that damages data works on its own copy (shutil.copytree)."""
    root = str(tmp_path_factory.mktemp("srn") / "cars")
    procedural.generate(root, "cars", "train", n_scenes=2, n_views=4, resolution=16, seed=0,
                        progress=False)
    return root
