"""The import graph: downward only between packages, and no cycle between modules
(imports inside functions included: a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "models", "streaming", "export", "apps", "bench")
# what each package may import besides itself (ARCHITECTURE.md: apps -> streaming, export,
# models -> engine; bench holds the benchmark and evaluation logic the commands run)
ALLOWED = {
    "engine": set(),
    "models": {"engine"},
    "streaming": {"engine"},
    "export": {"models", "engine"},
    "apps": {"bench", "streaming", "export", "models", "engine"},
    "bench": {"apps", "streaming", "export", "models", "engine"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            out[module_name(path)] = path
    return out


def imports_of(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Project modules a file imports, at any depth of the file."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imports_of(path, name, known) for name, path in known.items()}


def test_packages_import_only_downward() -> None:
    bad = [
        f"{a} imports {b}"
        for a, deps in graph().items()
        for b in deps
        if b.split(".")[0] != a.split(".")[0]
        and b.split(".")[0] not in ALLOWED[a.split(".")[0]]
    ]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle_between_modules() -> None:
    g = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
