"""The import graph of src/kvern: imports only go down the layers of the README's code map, and never in a circle.

5  cli, report (and the `kvern` package itself: the names task code imports)
4  api, runtime, controller, client
3  worker, autoscale, broker
2  catalog, jobs
1  spec, constants, errors, files, runtime_config, processes

Every import counts wherever it is written (module level, or inside a function), except those under
`if TYPE_CHECKING:`, which never run: they cannot make a cycle at import time, and type names may point anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# The most specific prefix wins: `kvern.runtime_config` is not `kvern.runtime`.
LAYERS: dict[str, int] = {
    "kvern": 5,
    "kvern.cli": 5,
    "kvern.report": 5,
    "kvern.api": 4,
    "kvern.enqueue": 4,  # the submission core shared by the job API and the app's own code (kvern.submit)
    "kvern.runtime": 4,
    "kvern.controller": 4,
    "kvern.client": 4,  # the HTTP client of the job API that `kvern submit` uses
    "kvern.worker": 3,
    "kvern.autoscale": 3,
    "kvern.broker": 3,
    "kvern.notify": 3,  # announcing finished jobs: webhooks and email, sent by the controller's outbox
    "kvern.observe": 3,  # the instance-wide metrics the controller publishes for /api/metrics
    "kvern.catalog": 2,
    "kvern.jobs": 2,
    "kvern.spec": 1,
    "kvern.constants": 1,
    "kvern.errors": 1,
    "kvern.files": 1,
    "kvern.runtime_config": 1,
    "kvern.processes": 1,
}

Edge = tuple[str, str]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module under root (a package is named by its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(f"{prefix}.")]
    return LAYERS[max(matches, key=len)] if matches else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules one import statement loads (`from a import b` is module a.b when there is one)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:  # relative: from the package that holds this module
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    if base in known and len(found) < len(node.names):
        found.add(base)
    return found


def import_graph(root: Path) -> set[Edge]:
    """(importer, imported) for every import between modules of the project under root."""
    names = module_names(root)
    known = set(names)
    edges = set()
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _imports(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target != module:
                    edges.add((module, target))
    return edges


def upward_imports(edges: set[Edge]) -> set[Edge]:
    upward = set()
    for importer, imported in edges:
        low, high = layer_of(importer), layer_of(imported)
        if low is not None and high is not None and high > low:
            upward.add((importer, imported))
    return upward


def reachable(following: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    pending = list(following.get(start, ()))
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(following.get(node, ()))
    return seen


def cycles(edges: set[Edge]) -> list[list[str]]:
    """Each group of modules that import one another, directly or through others."""
    following: dict[str, set[str]] = {}
    for importer, imported in edges:
        following.setdefault(importer, set()).add(imported)
    reach = {module: reachable(following, module) for module in following}
    groups = {
        frozenset({module} | {other for other in reach[module] if module in reach.get(other, set())})
        for module in reach
        if module in reach[module]
    }
    return sorted(sorted(group) for group in groups)


# -- the project ----------------------------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    assert [name for name in module_names(SRC) if layer_of(name) is None] == []


def test_imports_only_go_down() -> None:
    upward = upward_imports(import_graph(SRC))
    shown = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})" for a, b in sorted(upward)]
    assert shown == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph(SRC)) == []


# -- the checker itself ---------------------------------------------------------------------------------------


def write_modules(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_modules(
        tmp_path,
        {
            "kvern/__init__.py": "",
            "kvern/spec.py": "from kvern import constants\n",
            "kvern/constants.py": "",
            "kvern/jobs/__init__.py": "",
            "kvern/jobs/store.py": "from . import records\nfrom ..spec import Spec\n",
            "kvern/jobs/records.py": "import typing\nif typing.TYPE_CHECKING:\n    from kvern.cli import x\n",
            "kvern/worker/__init__.py": "",
            "kvern/worker/app.py": "def load():\n    from kvern.api.app import create_app\n",
            "kvern/api/__init__.py": "",
            "kvern/api/app.py": "import kvern.jobs.store\nfrom kvern.api import views\n",
            "kvern/api/views.py": "from kvern.api.app import create_app\n",
            "kvern/cli.py": "",
        },
    )


def test_the_graph_follows_absolute_relative_and_package_imports(tree: Path) -> None:
    assert import_graph(tree) == {
        ("kvern.spec", "kvern.constants"),
        ("kvern.jobs.store", "kvern.jobs.records"),
        ("kvern.jobs.store", "kvern.spec"),
        ("kvern.worker.app", "kvern.api.app"),
        ("kvern.api.app", "kvern.jobs.store"),
        ("kvern.api.app", "kvern.api.views"),
        ("kvern.api.views", "kvern.api.app"),
    }  # the import under TYPE_CHECKING is not an edge


def test_an_upward_import_and_a_cycle_are_found(tree: Path) -> None:
    edges = import_graph(tree)
    assert upward_imports(edges) == {("kvern.worker.app", "kvern.api.app")}
    assert cycles(edges) == [["kvern.api.app", "kvern.api.views"]]
