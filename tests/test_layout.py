"""The layout shows the flow: the steps of an event's path import only from the steps before
them, the hot path never imports training code, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the steps of the flow, in order; a module may import from its own step and those before it
STEPS = ["input", "features", "scoring", "output"]
HOT_PATH = ["input", "features", "entities", "scoring", "models", "output", "pipeline", "worker", "kafka"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of stream_ae and trainer -> the project modules it imports anywhere in its
    body (function-level and type-checking imports included)."""
    files = [*ROOT.glob("stream_ae/**/*.py"), *ROOT.glob("trainer/*.py")]
    modules = {_module_name(p): p for p in files}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        out[name] = found
    return out


def _step(module: str) -> int | None:
    parts = module.split(".")
    return STEPS.index(parts[1]) if len(parts) > 1 and parts[0] == "stream_ae" and parts[1] in STEPS else None


def test_each_step_imports_only_the_steps_before_it() -> None:
    wrong = [
        f"{m} imports {t}"
        for m, targets in _imports().items()
        for t in targets
        if _step(m) is not None and _step(t) is not None and _step(t) > _step(m)  # type: ignore[operator]
    ]
    assert not wrong, wrong


def test_the_hot_path_never_imports_training_code() -> None:
    hot = tuple(f"stream_ae.{p}" for p in HOT_PATH)
    wrong = [
        f"{m} imports {t}" for m, ts in _imports().items() if m.startswith(hot) for t in ts if t.startswith("trainer")
    ]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = _imports()
    # a package's __init__ importing its own modules is not a cycle of the code
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles
