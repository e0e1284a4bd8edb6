"""The install files agree with each other, and notebooks are committed clean."""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject():
    try:
        import tomllib
    except ImportError:                       # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env_pip_requirements():
    """The `pip:` list of environment.yml (a tiny parser: no PyYAML dependency)."""
    reqs, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if re.match(r"^\s*-\s*pip:\s*$", stripped):
            in_pip = True
            continue
        if in_pip:
            m = re.match(r"^\s{4,}-\s*(.+)$", stripped)
            if m:
                reqs.append(m.group(1).strip())
            elif stripped.strip():
                in_pip = False
    return reqs


def _name(req):
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["all"])
    env = [r for r in _env_pip_requirements() if not r.startswith("-e")]
    assert env, "environment.yml has no pip: section"
    assert set(env) == wanted, (
        f"environment.yml pip list drifted from pyproject.toml: only in environment.yml "
        f"{sorted(set(env) - wanted)}, only in pyproject {sorted(wanted - set(env))}")
    assert "-e ." in _env_pip_requirements(), "environment.yml must install minissd itself"


def test_all_extra_covers_every_extra():
    extras = _pyproject()["project"]["optional-dependencies"]
    others = {_name(r) for k, v in extras.items() if k != "all" for r in v}
    assert others == {_name(r) for r in extras["all"]}


def test_torch_not_pinned_to_broken_release():
    deps = _pyproject()["project"]["dependencies"]
    assert not any(d.replace(" ", "").startswith("torch==2.13") for d in deps)


@pytest.mark.parametrize("nb", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_committed_without_outputs(nb):
    cells = json.loads(nb.read_text())["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{nb.name} cell {i} has saved outputs"
            assert cell.get("execution_count") is None, f"{nb.name} cell {i} has an execution count"


def test_notebooks_are_numbered_and_start_with_parameters():
    nbs = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert nbs, "no notebooks"
    for nb in nbs:
        assert re.match(r"^\d\d_[a-z0-9_]+\.ipynb$", nb.name), nb.name
        code = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        assert "parameters" in code[0].get("metadata", {}).get("tags", []), (
            f"{nb.name}: the first code cell must be tagged 'parameters'")
