"""The tree's rules that a reader relies on (docs/architecture.md): no two modules import each other,
shared value types only at ``pipeline``'s root, no file name with two different jobs, short
functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# File names found in more than one folder, each pair doing one job at two layers: the stages' parallel
# halves, a command's options and its application, the Ray shell of a plain interface.
SAME_JOB = {
    "host.py": "each stage's host: sources/ and tracking/",
    "stage.py": "each stage's plain side: encoding/ and tracking/",
    "run.py": "samstream run: its options (cli/) and its application (apps/)",
    "serve.py": "samstream serve: its options (cli/) and its start-up (apps/)",
    "view.py": "samstream view: its options (cli/) and its application (apps/)",
    "weights.py": "the weights: the command (cli/) and their resolution (model/)",
    "transport.py": "the driver's transport: the interface and in-process one (jobs/), Ray's (workers/)",
    "metrics.py": "the metrics: names and local export (pipeline/), Ray's export (workers/), the service's "
    "job counts (api/)",
}


def _sources() -> list[Path]:
    return [p for folder in ("pipeline", "workers") for p in (ROOT / folder).rglob("*.py")]


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
    paths = _sources()
    modules = {_module(p) for p in paths}
    imports = {_module(p): _imports_at_load(p, modules) - {_module(p)} for p in paths}
    assert imports.get("pipeline.tracking.host"), "nothing was read"
    pairs = sorted({tuple(sorted((a, b))) for a, deps in imports.items() for b in deps if a in imports[b]})
    assert pairs == [], f"modules that import each other: {pairs}"


def test_only_shared_value_types_are_loose_at_the_root() -> None:
    loose = sorted(p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 8, f"{len(loose)} modules loose at pipeline/'s root: {loose}"


def test_no_file_name_has_two_jobs() -> None:
    folders: dict[str, list[str]] = {}
    for path in _sources():
        if path.name != "__init__.py":
            folders.setdefault(path.name, []).append(str(path.parent.relative_to(ROOT)))
    twice = {name: where for name, where in folders.items() if len(where) > 1 and name not in SAME_JOB}
    assert twice == {}, f"one file name in several folders: {twice}"


def test_no_function_is_over_120_lines() -> None:
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 120:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], f"functions over 120 lines: {long}"
