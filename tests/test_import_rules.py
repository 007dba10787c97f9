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
