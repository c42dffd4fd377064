"""The package layout: imports point one way, from the command line down to the core.

The static import graph is built from every ``import`` statement of the project's modules (lazy
ones inside functions included, by walking the whole syntax tree), then checked: no circle of any
length, no library module importing the command line, every folder importing only the folders
below it (docs/architecture.md), and tests and benchmarks reaching only public names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("arb_jax", "weights_convert", "bench")

# The folders of arb_jax, bottom first: a module may import its own folder and those before it.
LAYERS = ("checks", "registry", "models", "io", "core", "convert", "checkpoints", "study", "demo", "cli")
# The package's front door and plumbing: they reach everything lazily, nothing imports them back.
OUTSIDE_LAYERS = {"arb_jax", "arb_jax._moved", "arb_jax.__main__"}
ENTRY_POINTS = {"arb_jax.__main__"}  # may import the command line


def _module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _owning(name: str) -> str | None:
    """The longest project module that ``name`` (a dotted import target) lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.AST) -> Iterator[str]:
    """Dotted names an import statement makes Python load (before resolving to modules)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            if not _is_package(module):
                base = base[:-1]
            base = base[: len(base) - node.level + 1]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        yield pkg
        for alias in node.names:
            yield f"{pkg}.{alias.name}"  # a submodule when one has that name


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (a package's ``__init__`` counts as the package).

    Importing ``a.b.c`` also runs ``a`` and ``a.b``; those edges are kept unless the package
    holds the importing module (then it is already running).
    """
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(mod, node):
                owner = _owning(target)
                if owner is None:
                    continue
                parts = owner.split(".")
                for k in range(1, len(parts) + 1):
                    dep = ".".join(parts[:k])
                    if dep != mod and not mod.startswith(dep + ".") and dep in MODULES:
                        edges[mod].add(dep)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


GRAPH = import_graph()


def test_the_graph_sees_lazy_imports_and_every_module():
    # a function-level import (load_vit reads checkpoints through arb_jax.convert lazily)
    assert "arb_jax.convert" in GRAPH["arb_jax.checkpoints.loading"]
    assert "arb_jax.cli.sweep" in GRAPH["arb_jax.cli.main"]
    assert {"arb_jax.core.stats", "arb_jax.study.sweep", "arb_jax.convert.readers"} <= set(GRAPH)


def test_the_cycle_finder_finds_cycles():
    comps = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()})
    assert sorted(map(len, comps)) == [1, 1, 3]


def test_no_import_circles():
    circles = [c for c in strongly_connected(GRAPH) if len(c) > 1]
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_nothing_below_the_command_line_imports_it():
    bad = sorted(
        (m, d)
        for m, deps in GRAPH.items()
        for d in deps
        if (d == "arb_jax.cli" or d.startswith("arb_jax.cli."))
        and not (m == "arb_jax.cli" or m.startswith("arb_jax.cli."))
        and m not in ENTRY_POINTS
    )
    assert bad == []


def _layer(mod: str) -> int | None:
    if mod in OUTSIDE_LAYERS or not mod.startswith("arb_jax."):
        return None
    return LAYERS.index(mod.split(".")[1])


def test_folders_import_only_the_folders_below_them():
    assert {m.split(".")[1] for m in MODULES if _layer(m) is not None} == set(LAYERS)
    upward = []
    for mod, deps in GRAPH.items():
        here = _layer(mod)
        for dep in deps:
            there = _layer(dep)
            if here is not None and there is not None and there > here:
                upward.append(f"{mod} -> {dep}")
            if dep in OUTSIDE_LAYERS - {"arb_jax"} and mod.startswith("arb_jax.") and mod != "arb_jax":
                upward.append(f"{mod} -> {dep}")
    assert upward == []


def test_the_compatibility_shim_only_points_into_arb_jax_convert():
    for mod in ("weights_convert", "weights_convert.__main__"):
        allowed = ("arb_jax", "arb_jax._moved")
        assert all(d in allowed or d.startswith("arb_jax.convert") for d in GRAPH[mod]), mod
        assert not any(m != mod and mod in deps for m, deps in GRAPH.items() if m.startswith("arb_jax"))


def _private_uses(path: Path) -> Iterator[str]:
    """``from project.module import _name`` and ``alias._name`` on an imported project module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _owning(node.module or ""):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    yield f"{path.name}:{node.lineno}: import {a.name}"
                if _owning(f"{node.module}.{a.name}") == f"{node.module}.{a.name}":
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if _owning(a.name):
                    aliases.add(a.asname or a.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                yield f"{path.name}:{node.lineno}: {ast.unparse(node)}"


# The one private name a test must look at: the security test that a pickle cannot mutate the
# allow-listed function object itself (its __defaults__), which no public call can show.
ALLOWED_PRIVATE = {"test_convert.py: wc.safe_pickle._rebuild_parameter"}


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benchmarks_use_public_names(folder):
    found = [
        use
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "test_layout.py"
        for use in _private_uses(path)
    ]
    assert [u for u in found if f"{u.split(':')[0]}: {u.split(': ', 1)[1]}" not in ALLOWED_PRIVATE] == []


def test_the_private_name_check_finds_private_names(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from arb_jax.core import stats\nfrom arb_jax.core.stats import _x\nstats._y\n")
    assert [u.split(": ", 1)[1] for u in _private_uses(probe)] == ["import _x", "stats._y"]


def test_old_module_paths_reach_the_moved_modules():
    import importlib

    import arb_jax
    from arb_jax import _moved

    for old, new in _moved.MOVED.items():
        module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert module.__spec__.name == new and module.__name__ == new
        assert getattr(arb_jax, old.rpartition(".")[2]) is module
    import weights_convert.readers

    import weights_convert

    assert weights_convert.readers is importlib.import_module("arb_jax.convert.readers")
    assert weights_convert.load_tree is weights_convert.readers.load_tree
    assert set(weights_convert.__all__) == set(importlib.import_module("arb_jax.convert").__all__)


def test_the_old_modules_public_names_are_still_there():
    from arb_jax import sweep, train_demo

    for name in (
        "COLUMNS",
        "METHODS",
        "Grid",
        "Item",
        "RowWriter",
        "SourceError",
        "SweepConfig",
        "evaluate",
        "folder_items",
        "image_key",
        "open_source",
        "parse_grid",
        "read_rows",
        "row_key",
        "run_sweep",
        "tfds_items",
    ):
        assert hasattr(sweep, name), name
    for name in (
        "ASSETS",
        "WEIGHTS_FILE",
        "RECORD_FILE",
        "NOT_DINO",
        "DemoWeightsError",
        "load_demo_params",
        "TrainSettings",
        "train",
        "save_demo",
    ):
        assert hasattr(train_demo, name), name
