"""The package's imports form no cycle, lazy ones (inside functions) included: a module that imports another never
has that one import it back, directly or through a package's __init__ (docs/architecture.md draws the order)."""

from __future__ import annotations

import ast
from pathlib import Path

import jrome

ROOT = Path(jrome.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The jrome modules `path` imports anywhere in it, with the packages whose __init__ that runs first."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    with_packages = {".".join(m.split(".")[:k]) for m in found & known for k in range(2, m.count(".") + 2)}
    return {m for m in with_packages & known if m != name and not name.startswith(m + ".")}


def test_no_module_imports_itself_back():
    files = {module_name(f): f for f in ROOT.rglob("*.py")}
    graph = {name: imports(f, set(files)) for name, f in files.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> list[str] | None:
        for nxt in sorted(graph[start] - seen):
            seen.add(nxt)
            if nxt == goal:
                return [nxt]
            path = reaches(nxt, goal, seen)
            if path is not None:
                return [nxt, *path]
        return None

    cycles = [[name, *path] for name in sorted(graph) if (path := reaches(name, name, set())) is not None]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:3])
