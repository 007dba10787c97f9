"""The packages are rooms with one-way doors (docs/architecture.md): each test reads every module's imports from
its source (top level and inside functions alike) and fails naming the module and the import that breaks a rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mol_engine", "store", "api", "worker", "mol_cli")
# package -> the packages of ours it must never import (the CLI may import them all; nothing imports the CLI)
FORBIDDEN = {"mol_engine": {"store", "api", "worker", "mol_cli"}, "store": {"api", "worker", "mol_cli"},
             "api": {"worker", "mol_cli"}, "worker": {"api", "mol_cli"}, "mol_cli": set()}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in the module at ``path``, relative ones resolved."""
    module = path.relative_to(ROOT).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = module[:-node.level] if path.name != "__init__.py" else module[:len(module) - node.level + 1]
                found.add(((base or (node.module or "").split("."))[0], node.lineno))
            elif node.module:
                found.add((node.module.split(".")[0], node.lineno))
    return found


def breaches(package: str) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {name}"
            for path in sorted((ROOT / package).rglob("*.py"))
            for name, line in sorted(imported_packages(path)) if name in FORBIDDEN[package]]


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_through_its_doors(package):
    assert breaches(package) == []


def test_the_rule_reader_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    """The check itself can fail: a worker module importing the API inside a function, or the engine reaching
    the store relatively from a subpackage, is found."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "bad.py").write_text("def f():\n    from api.db import Job\n")
    (tmp_path / "mol_engine" / "demo").mkdir(parents=True)
    (tmp_path / "mol_engine" / "demo" / "bad.py").write_text("from ...store import db\nfrom .. import spec\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert breaches("worker") == ["worker/bad.py:2 imports api"]
    assert imported_packages(tmp_path / "mol_engine" / "demo" / "bad.py") == {("store", 1), ("mol_engine", 2)}


def route_module_imports(path: Path) -> list[str]:
    """``MODULE:LINE imports TARGET`` for each import in the route module at ``path`` of another route module: a
    sibling (``from .jobs``, ``from . import jobs``), ``from ..routes`` or ``api.routes`` (at any level)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.startswith("api.routes")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            sibling = node.level == 1
            parent = node.level == 2 and (module == "routes" or module.startswith("routes."))
            absolute = node.level == 0 and (module == "api.routes" or module.startswith("api.routes."))
            targets = [("." * node.level) + module] if sibling or parent or absolute else []
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {target}" for target in targets]
    return found


def test_no_route_module_imports_another():
    """Routes stay HTTP only: what two routes share lives in api/services/ or api/deps.py, never in a route module
    that another imports."""
    assert [line for path in sorted((ROOT / "api" / "routes").glob("*.py")) for line in route_module_imports(path)] \
        == []


def test_the_route_rule_reader_sees_siblings_and_absolute_imports(tmp_path):
    bad = tmp_path / "api" / "routes" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from .jobs import owned_job\nfrom . import datasets\nfrom ..routes.checkpoints import x\n"
                   "def f():\n    import api.routes.misc\nfrom ..deps import Owner\nfrom ..services.models import y\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
        assert route_module_imports(bad) == [
            "api/routes/bad.py:1 imports .jobs", "api/routes/bad.py:2 imports .",
            "api/routes/bad.py:3 imports ..routes.checkpoints", "api/routes/bad.py:5 imports api.routes.misc"]
