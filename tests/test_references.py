"""Every reference to this repository resolves: README.md, docs/*.md, the notebooks
(markdown and code cells) and the docstrings and comments of minissd/, benchmarks/ and
tests/ may only name files, modules and functions that exist.

What counts as a reference (the README's "Conventions" states the same rules):

* a path whose first folder is one of this repository's (`minissd/nerf/render.py`,
  `assets/models/`): the file or folder exists;
* a path inside the package without the `minissd/` prefix (`nerf/render.py`): it exists
  under minissd/, unless the sentence cites the official code;
* `path/file.py:name`, `file.py:Class.method` or file.py `name`: the file exists and
  defines the name
  (a def, class or assignment at the top level, then attributes of a class);
* a bare `file.py`: some file of this repository has that name, unless the word
  "official" comes before it in the same sentence (the official SSDNeRF code's files);
* `minissd.x.y`: the module imports and has the attribute;
* `module.name` with `module` the name of one of minissd's modules (`config.TestConfig`,
  `autodecoder.code_step`): a module of that name defines `name` (in the README, docs
  and docstrings; `model.` and `decoder.` are skipped: there they name objects);
* a relative Markdown link `[text](target)`: the target exists.

Paths that start with the official code's folders (`lib/`, `configs/`, `tools/`,
`demo/`) are the official code's and are not checked. The last test plants stale names
in a README and a docstring and checks that the messages name the file and the name.
"""
from __future__ import annotations

import ast
import functools
import importlib
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_DIRS = ("minissd", "tests", "benchmarks", "notebooks", "docs", "assets", ".ci")
OFFICIAL_DIRS = ("lib", "configs", "tools", "demo")
SKIP_FILES = {Path(__file__).resolve()}       # this file names stale references on purpose

PATH_RE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]*)")
FILE_FUNC_RE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.py)(?::|(?:'s)? `)([A-Za-z_][\w.]*)")
BARE_PY_RE = re.compile(r"(?<![\w/.-])([A-Za-z_][\w-]*\.py)\b(?!:)")
DOTTED_RE = re.compile(r"(?<![\w/.-])(minissd(?:\.[A-Za-z_]\w*)+)")
MODULE_ATTR_RE = re.compile(r"(?<![\w./-])([a-z_][a-z0-9_]*)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)")
OBJECT_NAMES = {"model", "decoder"}           # variables in prose, not the modules of that name
FILE_EXTENSIONS = {"py", "ipynb", "md", "json", "jsonl", "pt", "png", "gif", "txt", "npz", "zip"}
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
SENTENCE_END = re.compile(r"(?:[.!?]\s|\n\s*\n|\n\s*[*|#-]\s)")


# --------------------------------------------------------------------- the texts ----
def py_texts(path: Path):
    """(line, text) of every docstring and comment of a Python file."""
    src = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                yield body[0].lineno, body[0].value.value


def notebook_texts(path: Path):
    """(cell number, source) of every markdown and code cell."""
    for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] in ("markdown", "code"):
            yield f"{cell['cell_type']} cell {i}", "".join(cell["source"])


def markdown_texts(path: Path):
    yield 1, path.read_text(encoding="utf-8")


def sources(kind: str):
    """(relative path, iterator of (where, text)) for one kind of source."""
    if kind == "markdown":
        files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        reader = markdown_texts
    elif kind == "notebooks":
        files, reader = sorted((ROOT / "notebooks").glob("*.ipynb")), notebook_texts
    else:
        files = [p for d in ("minissd", "benchmarks", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
        reader = py_texts
    for f in files:
        if f.resolve() not in SKIP_FILES:
            yield f.relative_to(ROOT).as_posix(), reader(f)


# ------------------------------------------------------------------ resolution -----
@functools.lru_cache(maxsize=None)
def repo_files_by_name() -> dict:
    names: dict[str, list[Path]] = {}
    for d in ("minissd", "tests", "benchmarks", ".ci"):
        for p in (ROOT / d).rglob("*.py"):
            names.setdefault(p.name, []).append(p)
    for p in ROOT.glob("*.py"):
        names.setdefault(p.name, []).append(p)
    return names


@functools.lru_cache(maxsize=None)
def module_files() -> dict:
    """minissd's module names (file stems) -> their files."""
    stems: dict[str, list[Path]] = {}
    for p in (ROOT / "minissd").rglob("*.py"):
        if p.stem != "__init__":
            stems.setdefault(p.stem, []).append(p)
    return stems


def assigned_names(stmt) -> set:
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


@functools.lru_cache(maxsize=None)
def defined_names(path: Path) -> dict:
    """Top-level names of a Python file -> the attribute names of classes (else None):
    methods and nested classes, names assigned in the class body, and `self.x`."""
    out: dict[str, set | None] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = None
        elif isinstance(node, ast.ClassDef):
            attrs = set()
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    attrs.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) \
                        and sub.value.id == "self":
                    attrs.add(sub.attr)
            for stmt in node.body:
                if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                    attrs |= assigned_names(stmt)
            out[node.name] = attrs
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            out.update(dict.fromkeys(assigned_names(node)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(dict.fromkeys((a.asname or a.name).split(".")[0] for a in node.names))
    return out


def defines(path: Path, dotted: str) -> bool:
    first, *rest = dotted.split(".")
    names = defined_names(path)
    if first not in names:
        return False
    if not rest:
        return True
    return names[first] is not None and rest[0] in names[first]


def cites_official(text: str, start: int) -> bool:
    """Does the word "official" come before position `start` in the same sentence?"""
    ends = [m.end() for m in SENTENCE_END.finditer(text, 0, start)]
    return "official" in text[(ends[-1] if ends else 0):start].lower()


def resolve_file(ref: str, text: str, start: int) -> list[Path] | None:
    """Candidate files for a path or bare file name; None = not ours to check."""
    parts = ref.split("/")
    if len(parts) == 1:
        found = repo_files_by_name().get(ref, [])
        return found if found or not cites_official(text, start) else None
    if parts[0] in OFFICIAL_DIRS:
        return None
    if parts[0] in REPO_DIRS:
        return [ROOT / ref]
    if (ROOT / "minissd" / parts[0]).is_dir():
        if (ROOT / "minissd" / ref).exists() or not cites_official(text, start):
            return [ROOT / "minissd" / ref]
    return None                                   # another project's or the official code's


@functools.lru_cache(maxsize=None)
def dotted_problem(name: str) -> str | None:
    """None if `name` (minissd.x.y) is a module or an attribute of one, else the problem."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        mod_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name is not None and mod_name.startswith(e.name):
                continue                      # that module does not exist: try its parent
            raise
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"`{name}`: {obj.__name__!r} has no attribute {attr!r}" if i > 1 \
                    else f"`{name}`: no such module"
            obj = getattr(obj, attr)
        return None
    return f"`{name}`: no such module"


def problems_in(text: str, where: str, base: Path = ROOT, line0: int | None = None,
                module_attrs: bool = True) -> list[str]:
    """Stale references in one text, each as 'WHERE[:LINE]: what is wrong' (LINE when the
    text starts at line `line0` of its file)."""
    out, seen = [], set()
    pos = [0]

    def bad(msg):
        if msg not in seen:
            seen.add(msg)
            line = "" if line0 is None else f":{line0 + text.count(chr(10), 0, pos[0])}"
            out.append(f"{where}{line}: {msg}")

    claimed = []                                              # spans already checked
    for m in FILE_FUNC_RE.finditer(text):
        pos[0] = m.start()
        claimed.append(m.span(1))
        files = resolve_file(m.group(1), text, m.start())
        if files is None:
            continue
        files = [f for f in files if f.is_file()]
        if not files:
            bad(f"`{m.group(1)}:{m.group(2)}`: no file {m.group(1)}")
        elif not any(defines(f, m.group(2).rstrip(".")) for f in files):
            bad(f"`{m.group(1)}:{m.group(2)}`: {m.group(1)} defines no {m.group(2).rstrip('.')!r}")
    for m in PATH_RE.finditer(text):
        pos[0] = m.start()
        if any(a <= m.start() < b for a, b in claimed):
            continue
        ref = m.group(1).rstrip(".,;:")
        if ref.startswith(("http", "www.")) or "://" in text[max(0, m.start() - 8):m.start()]:
            continue
        parts = ref.split("/")
        if parts[0] not in REPO_DIRS and not (ref.endswith(".py") and
                                              (ROOT / "minissd" / parts[0]).is_dir()):
            continue
        files = [ROOT / ref] if parts[0] in REPO_DIRS else resolve_file(ref, text, m.start())
        if files is not None and not any(f.exists() for f in files):
            bad(f"`{ref}`: no such file or folder")
    for m in BARE_PY_RE.finditer(text):
        pos[0] = m.start()
        files = resolve_file(m.group(1), text, m.start())
        if files is not None and not files:
            bad(f"`{m.group(1)}`: no file of that name in the repository")
    for m in DOTTED_RE.finditer(text):
        pos[0] = m.start()
        msg = dotted_problem(m.group(1).rstrip("."))
        if msg:
            bad(msg)
    for m in MODULE_ATTR_RE.finditer(text) if module_attrs else ():
        pos[0] = m.start()
        stem, name = m.groups()
        files = module_files().get(stem)
        if files and stem not in OBJECT_NAMES and name not in FILE_EXTENSIONS \
                and not any(defines(f, name) for f in files):
            bad(f"`{m.group(0)}`: no module {stem}.py defines {name!r}")
    for m in LINK_RE.finditer(text):
        pos[0] = m.start()
        target = m.group(1).split("#")[0]
        if target and not re.match(r"[a-z]+:", target) and not (base / target).exists():
            bad(f"link `{m.group(1)}`: no such file")
    return out


def all_problems(kind: str) -> list[str]:
    out = []
    for rel, texts in sources(kind):
        base = (ROOT / rel).parent
        for where, text in texts:
            if isinstance(where, int):
                out += problems_in(text, rel, base, line0=where)
            else:                # notebook code names variables like `train.x`: not checked
                out += problems_in(text, f"{rel} {where}", base, line0=1,
                                   module_attrs=not where.startswith("code"))
    return out


# ----------------------------------------------------------------------- tests -----
@pytest.mark.parametrize("kind", ["markdown", "notebooks", "python"])
def test_references_resolve(kind):
    found = all_problems(kind)
    assert not found, "stale references:\n  " + "\n  ".join(found)


def paper_table() -> list[tuple[str, str]]:
    """(paper cell, code cell) of each row of the README's paper -> code table."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Paper -> code", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("|") and not r.startswith("|---")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]
    return [(c[0], c[-1]) for c in cells]


def test_paper_table_covers_the_paper_and_points_at_functions():
    rows = paper_table()
    eqs = {int(n) for paper, _ in rows for n in re.findall(r"eq\. \((\d)\)", paper)}
    assert eqs >= {1, 2, 4, 5, 6, 7}, f"README paper -> code table: equations {sorted(eqs)}"
    lines = set()
    for paper, _ in rows:
        for a, b in re.findall(r"lines? (\d+)(?:-(\d+))?", paper):
            lines |= set(range(int(a), int(b or a) + 1))
    assert lines == set(range(1, 14)), f"README table: Algorithm 1 lines {sorted(lines)}"
    for paper, code in rows:
        refs = FILE_FUNC_RE.findall(code)
        assert refs, f"README.md paper -> code row {paper!r}: no `file.py:function` in {code!r}"
        for path, name in refs:
            assert (ROOT / path).is_file() and defines(ROOT / path, name), \
                f"README.md paper -> code row {paper!r}: `{path}:{name}` does not exist"


def test_a_planted_stale_name_is_caught(tmp_path):
    """The checker is not vacuous: stale names in a README-like text and in a docstring
    are reported with the file and the name; true ones and the official code's are not."""
    readme = ("See `minissd/nerf/render.py:render_rays` and `minissd/nerf/renderer.py`, "
              "`minissd/nerf/render.py:render_ray`, `minissd.nerf.render.NEAR_MIN`, "
              "`minissd.nerf.rendering`, [docs](docs/nowhere.md) and `autodecoders.py`. "
              "The official code: lib/models/autodecoders/base_nerf.py and official "
              "`diffusion_nerf.py`.\n")
    found = problems_in(readme, "README.md")
    assert found == ["README.md: `minissd/nerf/render.py:render_ray`: minissd/nerf/render.py "
                     "defines no 'render_ray'",
                     "README.md: `minissd/nerf/renderer.py`: no such file or folder",
                     "README.md: `docs/nowhere.md`: no such file or folder",
                     "README.md: `autodecoders.py`: no file of that name in the repository",
                     "README.md: `minissd.nerf.rendering`: 'minissd.nerf' has no attribute "
                     "'rendering'",
                     "README.md: link `docs/nowhere.md`: no such file"], found
    mod = tmp_path / "stale.py"
    mod.write_text('"""Uses ssd/trainer.py and minissd.prior.diffusion.prior_grad."""\n'
                   "x = 1  # see nerf/render.py:render_rays, autodecoder.code_stepp,\n"
                   "# render.py `composite`, render.py `compose`\n")
    found = sorted(p for where, text in py_texts(mod) for p in problems_in(text, f"stale.py:{where}"))
    assert found == ["stale.py:1: `minissd.prior.diffusion.prior_grad`: "
                     "'minissd.prior.diffusion' has no attribute 'prior_grad'",
                     "stale.py:1: `ssd/trainer.py`: no such file or folder",
                     "stale.py:2: `autodecoder.code_stepp`: no module autodecoder.py defines "
                     "'code_stepp'",
                     "stale.py:3: `render.py:compose`: render.py defines no 'compose'"], found


def test_readme_test_command_is_what_ci_runs():
    """.ci/run says it runs the README's test command: the two stay identical."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("\\\n", " ")
    ci_cmd = " ".join(next(line for line in ci.splitlines()
                           if line.startswith("MINISSD_FAST=1 python -m pytest")).split())
    readme_cmds = [" ".join(line.split("&&")[-1].split()) for line in readme.splitlines()
                   if "python -m pytest" in line]
    assert ci_cmd in readme_cmds, f"README.md's test command {readme_cmds} != .ci/run's {ci_cmd!r}"
    assert 'pip install -e ".[all]"' in ci, ".ci/run must install what the README's test line does"
