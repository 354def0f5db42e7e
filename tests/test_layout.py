"""The package's shape: no module imports another in a circle, counting imports made inside
functions (a lazy import that only hides a cycle is still one), not even a type-only one under
``TYPE_CHECKING``; no import runs back up the layers (``LAYERS``); and every module sits in a
package by concern with a docstring that says what it holds."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tuner"
TOP_LEVEL = {"__init__", "__main__", "cli", "errors", "settings", "specs"}  # the entry and the vocabulary every package uses

# The layers as ARCHITECTURE.md draws them, bottom first: a module may import its own layer and
# those ranked lower, never one ranked higher. search/ only chooses (space, planner, sampler,
# Pareto, finalists): it runs nothing and reaches no deploy target; sweep/ is the application
# layer that runs it all; reports/ reads what search chose (the Pareto axes, the space).
LAYERS = {
    "tuner": 0,            # the package itself (tuner/__init__.py)
    "tuner.errors": 1,     # the exceptions every layer raises
    "tuner.settings": 2,   # every setting declared once
    "tuner.specs": 3,      # what a trial asks for, derived from the settings
    "tuner.machine": 4,    # the machine: clean child environments, CPUs, output, env variables
    "tuner.models": 5,     # GGUF files
    "tuner.builds": 6,     # kernel builds of llama.cpp
    "tuner.evidence": 7,   # what llama.cpp's logs say happened
    "tuner.results": 8,    # the records and the one store
    "tuner.worker": 9,     # the trial worker, both sides of its pipe (runner)
    "tuner.search": 10,    # choosing: space, planner, sampler, pruning, Pareto, finalists
    "tuner.deploy": 11,    # the production config and the services that load it
    "tuner.sweep": 12,     # the sweep (application layer): its phases, budget, builds, decision
    "tuner.reports": 13,   # read-only views of stored studies
    "tuner.cli": 14,       # the command line
    "tuner.__main__": 15,  # the entry point
}


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = ("tuner", *p.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The tuner modules ``name`` imports anywhere in its file, inside functions and under
    ``TYPE_CHECKING`` too (``from a import b`` counts as a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def rank(module: str) -> int:
    """The layer of ``module``: that of its longest prefix in ``LAYERS``."""
    parts = module.split(".")
    return next(LAYERS[".".join(parts[:n])] for n in range(len(parts), 0, -1)
                if ".".join(parts[:n]) in LAYERS)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs back up the layers, as ``importer -> imported``."""
    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a]) if rank(b) > rank(a)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    out = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    assert sum(len(v) for v in out.values()) > 100  # the graph was read
    return out


def test_no_import_cycles_even_through_lazy_or_type_only_imports() -> None:
    assert cycles(graph()) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in modules() if rank(m) == 0 and m != "tuner"] == []


def test_no_import_runs_back_up_the_layers() -> None:
    assert upward(graph()) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    assert upward({"tuner.worker.bench": {"tuner.search.pruning", "tuner.results.records"}}) \
        == ["tuner.worker.bench -> tuner.search.pruning"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_is_in_a_package_by_concern_with_a_docstring() -> None:
    loose = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in TOP_LEVEL]
    assert loose == []
    undocumented = [name for name, p in modules().items()
                    if not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []
