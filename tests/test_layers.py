"""The layers point one way (docs/architecture.md), and nothing imports in a cycle.

An ``ast`` walk over every module of ``models/`` and ``pipeline/`` (function-level and
``TYPE_CHECKING`` imports included): each import of a project module must go to the same layer or
a lower one, and the module graph must have no cycle. The checker also runs on a small tree with a
deliberately wrong import, to show that it catches one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Highest first. A module may import its own layer and those below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("pipeline.cli",),
    ("pipeline.tools",),
    ("pipeline.retrain",),
    ("pipeline.worker",),
    ("pipeline.kafka", "pipeline.monitor"),
    ("pipeline.stream",),
    ("pipeline.inference",),
    ("pipeline.wire",),
    ("pipeline.settings", "pipeline"),
    ("models",),
)
# Siblings in one layer that must not import each other either.
SEPARATE = (("pipeline.kafka", "pipeline.monitor"),)


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise ValueError(f"{module} is in no layer: add it to LAYERS")
    return rank


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from pkg import mod`` resolved to ``pkg.mod``)."""
    files = [p for top in ("pipeline", "models") for p in (root / top).rglob("*.py")]
    names = {_module_name(p, root) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        name = _module_name(path, root)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] in ("pipeline", "models"))
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.level:
                    raise AssertionError(f"{path}: relative import of {node.module}; use absolute imports")
                if node.module.split(".")[0] not in ("pipeline", "models"):
                    continue
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in names else node.module)
        deps.discard(name)
        graph[name] = deps
    return graph


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if layer_of(dep) < layer_of(mod):
                out.append(f"{mod} imports {dep}, a higher layer")
            for a, b in SEPARATE:
                for x, y in ((a, b), (b, a)):
                    if (mod == x or mod.startswith(x + ".")) and (dep == y or dep.startswith(y + ".")):
                        out.append(f"{mod} imports {dep}: {x} and {y} stay independent")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_project_respects_its_layers():
    graph = import_graph(ROOT)
    assert len(graph) > 40  # the walk found the project
    assert violations(graph) == []


def test_the_project_has_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "wrong",
    [
        "from pipeline.kafka.clients import make_consumer\n",  # stream -> kafka
        "import pipeline.worker\n",  # stream -> worker
        "def f():\n    from pipeline.cli import app\n",  # hidden in a function
    ],
)
def test_checker_catches_a_wrong_import(tmp_path, wrong):
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/kafka/__init__.py": "",
        "pipeline/kafka/clients.py": "from pipeline.stream.windowing import W\n",  # downwards: fine
        "pipeline/worker.py": "",
        "pipeline/cli/__init__.py": "",
        "pipeline/cli/app.py": "",
        "pipeline/stream/__init__.py": "",
        "pipeline/stream/windowing.py": "W = 1\n",
        "pipeline/stream/bad.py": wrong,
        "models/__init__.py": "",
    })
    found = violations(import_graph(root))
    assert len(found) == 1 and found[0].startswith("pipeline.stream.bad imports "), found


def test_checker_catches_models_importing_pipeline_and_siblings(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/monitor/__init__.py": "",
        "pipeline/monitor/m.py": "from pipeline.kafka import producer\n",
        "pipeline/kafka/__init__.py": "",
        "pipeline/kafka/producer.py": "",
        "models/__init__.py": "",
        "models/train.py": "from pipeline.settings import Settings\n",
        "pipeline/settings.py": "",
    })
    found = violations(import_graph(root))
    assert any(v.startswith("models.train imports pipeline.settings") for v in found)
    assert any(v.startswith("pipeline.monitor.m imports pipeline.kafka.producer") for v in found)


def test_cycle_finder_reports_a_cycle(tmp_path):
    root = _tree(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/monitor/__init__.py": "",
        "pipeline/monitor/a.py": "from pipeline.monitor import b\n",
        "pipeline/monitor/b.py": "def f():\n    from pipeline.monitor.a import x\n",
        "models/__init__.py": "",
    })
    assert cycles(import_graph(root)) == [["pipeline.monitor.a", "pipeline.monitor.b"]]
