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


# ----------------------------------------------------------------------------- the wheel

def _can_build_wheel():
    """setuptools >= 64 (pyproject builds) with its own bdist_wheel (>= 70.1) or the wheel package."""
    import importlib.util
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    import setuptools
    if int(setuptools.__version__.split(".")[0]) < 64:
        return f"setuptools {setuptools.__version__} < 64"
    if (importlib.util.find_spec("setuptools.command.bdist_wheel") is None
            and importlib.util.find_spec("wheel") is None):
        return "no bdist_wheel (setuptools < 70.1 and no wheel package)"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built (non-editable, no network) from a copy of the files that go into it."""
    import shutil
    import subprocess
    import sys
    why = _can_build_wheel()
    if why:
        pytest.skip(f"cannot build a wheel here: {why}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "minissd", src / "minissd",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / "assets" / "models", src / "assets" / "models")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list((tmp / "dist").glob("minissd-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_models_and_license(wheel):
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "assets" / "models").glob("*.pt"))
    assert shipped, "assets/models has no checkpoints"
    for f in shipped + ["manifest.json"]:
        assert f"minissd/assets/models/{f}" in names, f"{f} is not in the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # every module of every subpackage (data/, nerf/, prior/, ...) is in the wheel
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "minissd").rglob("*.py"))
    assert "minissd/ssd/model.py" in modules
    missing = [m for m in modules if m not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_installed_wheel_finds_its_models(wheel, tmp_path):
    """Unpacked as pip installs it (no repository around it), the package looks in itself first."""
    import subprocess
    import sys
    import zipfile
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import os, minissd.ssd.model as e; d = e.model_dirs()[0]; print(d); "
            "print(sorted(f for f in os.listdir(d) if f.endswith('.pt')))")
    env = {**__import__("os").environ, "PYTHONPATH": str(site), "MINISSD_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, listed = out.stdout.splitlines()[:2]
    assert pathlib.Path(first).resolve() == (site / "minissd" / "assets" / "models").resolve()
    assert eval(listed) == sorted(p.name for p in (ROOT / "assets" / "models").glob("*.pt"))


def test_missing_model_says_so_once_before_training(tmp_path, monkeypatch, capsys):
    """No shipped or cached model matches: one message (will train, how long, where) first."""
    from minissd.config import get_preset
    from minissd.ssd import model as model_module

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop
    monkeypatch.setenv("MINISSD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(model_module, "ensure_dataset", stop)      # would make data, then train
    cfg = get_preset("smoke", iters=7)                            # a key nothing ships
    with pytest.raises(Stop):
        model_module.load_or_train("single-stage", cfg, progress=False)
    out = capsys.readouterr().out
    key = model_module.model_key("cars", "single-stage", cfg)
    assert out.count("[minissd] no shipped or cached model") == 1
    assert key in out and "Training it now" in out and "min" in out
    assert str(tmp_path / "cache") in out                         # where it caches
