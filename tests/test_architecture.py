"""The tree's rules that a reader relies on (docs/architecture.md): no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_load(path: Path, modules: set[str]) -> set[str]:
    """The project's modules ``path`` imports as it loads (not inside functions, not for typing)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node):
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                found.add(n.module)
                found.update(f"{n.module}.{a.name}" for a in n.names)
            elif isinstance(n, ast.Import):
                found.update(a.name for a in n.names)
    return found & modules


def test_no_two_modules_import_each_other() -> None:
    paths = [p for folder in ("pipeline", "workers") for p in (ROOT / folder).rglob("*.py")]
    modules = {_module(p) for p in paths}
    imports = {_module(p): _imports_at_load(p, modules) - {_module(p)} for p in paths}
    assert imports.get("pipeline.tracking.host"), "nothing was read"
    pairs = sorted({tuple(sorted((a, b))) for a, deps in imports.items() for b in deps if a in imports[b]})
    assert pairs == [], f"modules that import each other: {pairs}"
