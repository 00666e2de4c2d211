"""The package's import graph: no cycles, and arrows point one way.

cli -> bench / daemon -> learn -> meta -> model. Function-local imports count too:
they are how a cycle hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stream_meta", "connectors")

# Lower number = lower layer. A module may import only its own layer or lower ones.
LAYERS = {
    "stream_meta": 0,  # __version__
    "stream_meta.errors": 0,
    "stream_meta.model": 0,
    "stream_meta.meta": 1,
    "stream_meta.learn": 2,
    "stream_meta.data": 2,
    "connectors": 2,
    "stream_meta.daemon": 3,
    "stream_meta.bench": 4,
    "stream_meta.cli": 5,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> tuple[str, int]:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return best, LAYERS[best]


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                # the deepest known module the import names (``from pkg import mod`` names pkg.mod)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    # a package's __init__ re-exporting its own submodules is not a cycle of the design
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_graph_is_read_from_the_tree():
    graph = import_graph()
    assert "stream_meta.daemon.service" in graph
    assert "stream_meta.learn.learner" in graph["stream_meta.daemon.app"]


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["stream_meta.model"] = graph["stream_meta.model"] | {"stream_meta.daemon.service"}
    assert find_cycle(graph) is not None


def test_arrows_point_down():
    wrong = []
    for module, deps in import_graph().items():
        home, rank = layer(module)
        for dep in deps:
            dep_home, dep_rank = layer(dep)
            if dep_rank > rank:
                wrong.append(f"{module} ({home}) imports {dep} ({dep_home})")
    assert wrong == []


def test_config_loads_without_torch():
    import subprocess
    import sys

    code = ("import sys; from stream_meta.daemon.config import load_config; "
            "load_config({'algorithm': 'reptile'}, env={}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_algorithm_choices_match_the_learners():
    from stream_meta.daemon.config import ALGORITHM_CHOICES
    from stream_meta.learn.learner import learner_names

    assert sorted(ALGORITHM_CHOICES) == sorted(learner_names())
