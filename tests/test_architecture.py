"""The package's import structure: three jobs stacked one way, no cycles, no hidden project
imports, no private reach-ins, and the library never imports the repo-root `configs/`.

Parses the source (nothing is imported), so a cycle is caught even where Python would tolerate
it at run time thanks to a function-level import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cliffdistill"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}
CONFIG_FILES = sorted((ROOT / "configs").rglob("*.py"))

#: The jobs, lowest first (docs/ARCHITECTURE.md): a module may import its own job and those
#: below it, never one above. The leaves (models, data, stats) are the model core and its inputs;
#: the engine is one step's pure pieces; the run is everything one run needs from a config; the
#: study (with report/) is built on runs; the command lines (`cliffdistill/<command>.py`) on top.
JOBS = (("cliffdistill.models", 0), ("cliffdistill.data", 0), ("cliffdistill.stats", 0),
        ("cliffdistill.engine", 1), ("cliffdistill.run", 2), ("cliffdistill.tasks", 2),
        ("cliffdistill.report", 3),
        ("cliffdistill.study", 3))


def job(module: str) -> int:
    """The job level of a package module; top-level command-line modules are above every job."""
    for prefix, level in JOBS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    return len(JOBS)


def _is_function_level(tree: ast.Module) -> set[int]:
    """ids of import nodes inside a function body."""
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inner


def _imports(path: Path, tree: ast.Module | None = None) -> list[tuple[str, ast.AST]]:
    """(imported project module, node) for every import of a `cliffdistill` module in `path`
    (pass the already parsed `tree` to compare node ids with it)."""
    tree = ast.parse(path.read_text()) if tree is None else tree
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node) for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != PACKAGE:
                continue
            for a in node.names:  # `from pkg import module` imports the module itself
                sub = f"{node.module}.{a.name}"
                out.append((sub if sub in MODULES else node.module, node))
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _imports(path) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with colours)."""
    colour = {n: 0 for n in graph}  # 0 new, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_jobs_import_only_downwards():
    """engine never imports run/study/report, run never imports study/report, the leaves nothing."""
    up = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                if b != PACKAGE and job(b) > job(a))
    assert not up, f"imports from a lower job into a higher one: {up}"


def test_every_module_belongs_to_a_job_or_is_a_command():
    """A top-level module is a command line (`python -m cliffdistill.<name>`, absl `app.run`)."""
    stray = [name for name, path in MODULES.items()
             if job(name) == len(JOBS) and name != PACKAGE and "app.run(main)" not in path.read_text()]
    assert not stray, f"modules outside models/data/engine/run/study/report that are no command: {stray}"


def _imports_configs(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any((isinstance(n, ast.Import) and any(a.name.split(".")[0] == "configs" for a in n.names))
               or (isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
                   and n.module.split(".")[0] == "configs") for n in ast.walk(tree))


def test_library_never_imports_repo_root_configs():
    """What the library and the configs share lives in the package (`run.defaults`,
    `study.toy_config`); a user who installs the package has no `configs/`."""
    bad = [name for name, path in MODULES.items() if _imports_configs(path)]
    assert not bad, f"library modules importing the repo-root configs/: {bad}"


def test_configs_import_only_the_package():
    """A config file builds on `cliffdistill` (never on another config file), so the two form one
    one-way stack: configs/ -> cliffdistill."""
    bad = [str(p.relative_to(ROOT)) for p in CONFIG_FILES if _imports_configs(p)]
    assert not bad, f"config files importing configs/: {bad}"


def test_configs_detector_sees_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from configs import toy\n")
    assert _imports_configs(f)


def test_no_function_level_project_imports():
    """Project modules are imported at the top, where the dependency is visible."""
    hidden = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())  # one tree: node ids are compared within it
        inner = _is_function_level(tree)
        tree_nodes = {id(node) for _, node in _imports(path, tree)}
        hidden += [name for node_id in tree_nodes & inner]
    assert not hidden, f"function-level imports of cliffdistill modules in {sorted(set(hidden))}"


def _private_uses(path: Path) -> list[str]:
    """`module._name` and `from module import _name` for project modules, in one file."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in MODULES:
                    aliases[a.asname or a.name] = sub
                elif a.name.startswith("_"):
                    found.append(f"from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


@pytest.mark.parametrize("folder", [PACKAGE, "tests", "benchmarks"])
def test_no_private_names_across_modules(folder):
    uses = {str(p.relative_to(ROOT)): u for p in sorted((ROOT / folder).rglob("*.py"))
            if (u := _private_uses(p))}
    assert not uses, f"private names used outside their module: {uses}"


def test_private_use_detector_sees_attribute_access(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from cliffdistill import train\ntrain._helper()\n")
    assert _private_uses(f) == ["cliffdistill.train._helper"]
