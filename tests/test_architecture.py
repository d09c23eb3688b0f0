"""The package layering of w2s, checked from the source alone (nothing is imported).

Every module of ``w2s/`` is parsed with :mod:`ast`. Each import in it, at the top or inside a
function, and each ``importlib.import_module("w2s....")`` with a literal (or f-string) name, is an
edge from the module's COMPONENT to the imported one. A component is a subpackage or a top-level
module of w2s (``w2s.data``, ``w2s.models``, ``w2s.cli``, ...); ``w2s`` itself is the package's
``__init__``. Imports inside one component are its own business and are not checked.

The components sit in layers, lowest first (see :data:`LAYERS`). A component may import its own
layer and the layers below it, never one above: so nothing below the methods can import a method,
and the data, model and training layers stay usable without the code that is built on them.
Where a lower layer needs a higher one at run time it keeps a registration hook that the higher
one fills (:mod:`w2s.models.builders`, filled by :mod:`w2s.tiny`), so no import points up.
Inside one layer the components must not form a cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "w2s"

LAYERS: list[set[str]] = [
    # base: no model, no data; torch only inside functions. api is the stdlib HTTP client of
    # the api: judge and the api: search base; launch fans a sweep out as `w2s ...` processes.
    {"w2s", "w2s.errors", "w2s.config", "w2s.runs", "w2s.cache", "w2s.compute", "w2s.seeding",
     "w2s.progress", "w2s.api", "w2s.launch"},
    {"w2s.data"},  # tasks as rows of dicts
    {"w2s.models"},  # naming, loading and scoring models
    {"w2s.train"},  # the one training loop, losses, preference training
    {"w2s.tiny"},  # tiny models pretrained through the loop (tinyworld, corpus stages)
    {"w2s.evaluation"},  # metrics, judges, reports
    {"w2s.methods"},  # the registry and one package per method
    {"w2s.lab", "w2s.cli", "w2s.cli_eval", "w2s.console", "w2s.__main__"},  # entry points
]

ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
"""Imports that point up, each with why: none (a lower layer that needs a higher one keeps a
registration hook instead)."""

LOWER_THAN_METHODS = ("w2s.data", "w2s.models", "w2s.train")


def module_name(path: Path, root: Path = ROOT) -> str:
    """``w2s/data/core.py`` -> ``w2s.data.core``; ``w2s/data/__init__.py`` -> ``w2s.data``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def component(name: str) -> str | None:
    """``w2s.data.core`` -> ``w2s.data``; ``w2s`` -> ``w2s``; a name outside w2s -> None."""
    parts = name.split(".")
    if parts[0] != "w2s":
        return None
    return ".".join(parts[:2])


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of ``from X import ...`` (relative imports included)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_prefix(arg: ast.expr) -> str | None:
    """The name given to ``import_module``: a string, or the constant head of an f-string
    (``f"w2s.methods.{name}"`` -> ``w2s.methods.``)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return None


def _is_module(name: str, root: Path) -> bool:
    where = root.parent / name.replace(".", "/")
    return where.is_dir() or where.with_suffix(".py").is_file()


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """Every module ``path`` imports, anywhere in it, as ``(absolute name, line)``."""
    module = module_name(path, root)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, is_package, node)
            found.append((target, node.lineno))
            # `from w2s import cli` and `from w2s.data import hub` import submodules
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names
                      if _is_module(f"{target}.{alias.name}", root)]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == "import_module":
                name = _literal_prefix(node.args[0])
                if name is not None:
                    found.append((name.rstrip("."), node.lineno))
    return found


def import_graph(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """``(from component, to component) -> ["w2s/x.py:12 imports w2s.y.z", ...]`` between
    different components of w2s."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        source = component(module_name(path, root))
        for target, line in imports_of(path, root):
            dest = component(target)
            if dest is None or dest == source:
                continue
            where = f"{path.relative_to(root.parent)}:{line} imports {target}"
            edges[(source, dest)].append(where)
    return dict(edges)


def find_cycle(edges) -> list[str] | None:
    """One cycle of the component graph (``[a, b, ..., a]``), or None."""
    after: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        after[a].add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(after[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(after):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"{name} is in no layer of tests/test_architecture.py: place it")


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_component_has_a_layer(graph):
    for path in ROOT.rglob("*.py"):
        layer_of(component(module_name(path)))


def test_no_cycle_between_components(graph):
    cycle = find_cycle(graph)
    if cycle:
        lines = [f"  {a} -> {b}: {graph[(a, b)][0]}" for a, b in pairwise(cycle)]
        pytest.fail("import cycle between components of w2s:\n" + "\n".join(lines))


def test_nothing_below_the_methods_imports_a_method(graph):
    bad = [where for (a, b), wheres in graph.items()
           if a in LOWER_THAN_METHODS and b == "w2s.methods" for where in wheres]
    assert not bad, "\n".join(bad)


def test_imports_point_down_the_layers(graph):
    bad = [f"{where}  ({a} is in layer {layer_of(a)}, {b} in layer {layer_of(b)})"
           for (a, b), wheres in graph.items()
           if layer_of(b) > layer_of(a) and (a, b) not in ALLOWED_UPWARD for where in wheres]
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


MAX_LINES = 600
"""A module longer than this is doing several jobs: split it by what it does."""


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT.parent)): n for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules longer than {MAX_LINES} lines: {long}"


def test_the_checker_sees_every_kind_of_import(tmp_path):
    """A cycle hidden in a function-level import or an import_module string is still found."""
    pkg = tmp_path / "w2s"
    for sub in ("data", "models"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from w2s.models import b\n")
    (pkg / "models" / "b.py").write_text(
        "import importlib\nM = importlib.import_module(f'w2s.data.{1}')\n")
    edges = import_graph(pkg)
    assert set(edges) == {("w2s.data", "w2s.models"), ("w2s.models", "w2s.data")}
    assert find_cycle(edges) == ["w2s.data", "w2s.models", "w2s.data"]
    assert find_cycle({("w2s.data", "w2s.models"): []}) is None


def test_help_stays_torch_free():
    """`w2s --help` and a method's --help import neither torch nor transformers: the CLI, the
    config and the method modules keep them inside the functions that run a command."""
    script = """
import sys
from w2s.cli import main
for argv in (["--help"], ["generalize", "--help"], ["wspo", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_no_merge_conflict_markers_are_left_in_tracked_files():
    """A merge that left ``<<<<<<<`` / ``>>>>>>>`` lines in a file (the README, a recipe) is
    caught here, not by a reader."""
    repo = ROOT.parent
    files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    bad = []
    for name in files.stdout.splitlines():
        path = repo / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", "") \
                or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        bad += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                if line.startswith(("<<<<<<< ", ">>>>>>> "))]
    assert not bad, f"merge conflict markers left in {bad}"
