"""The public surface: a sorted __all__, and the core never imports its schedulers."""

from __future__ import annotations

import ast
from pathlib import Path

import rangefetch

PACKAGE = Path(rangefetch.__file__).parent
SCHEDULERS = {"producer", "worker"}


def test_all_is_sorted_and_unique() -> None:
    assert rangefetch.__all__ == sorted(rangefetch.__all__)
    assert len(set(rangefetch.__all__)) == len(rangefetch.__all__)


def test_every_exported_name_resolves() -> None:
    for name in rangefetch.__all__:
        assert getattr(rangefetch, name) is not None, name


def test_every_module_all_resolves() -> None:
    import importlib

    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__main__":
            continue  # runs the CLI on import
        module = importlib.import_module(f"rangefetch.{path.stem}") if path.stem != "__init__" else rangefetch
        for name in getattr(module, "__all__", []):
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_classes_and_functions_are_documented() -> None:
    for name in rangefetch.__all__:
        obj = getattr(rangefetch, name)
        if callable(obj):
            assert obj.__doc__, name


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").exists()


def imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            # importlib.import_module("producer.x") / __import__("worker")
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    roots.add(arg.value.split(".")[0])
    return roots


def test_core_never_imports_the_schedulers() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found = imported_roots(ast.parse(path.read_text(), filename=str(path))) & SCHEDULERS
        if found:
            offenders[path.relative_to(PACKAGE).as_posix()] = sorted(found)
    assert offenders == {}


def test_the_import_scan_sees_what_it_looks_for() -> None:
    source = "import producer.jobs\nfrom worker import x\nimportlib.import_module('worker.settings')\n"
    assert imported_roots(ast.parse(source)) == {"producer", "worker"}
    assert imported_roots(ast.parse("from .producer import x\nimport rangefetch")) == {"rangefetch"}


def test_plan_does_no_io_and_never_imports_httpx() -> None:
    roots = imported_roots(ast.parse((PACKAGE / "plan.py").read_text()))
    assert roots.isdisjoint({"httpx", "os", "asyncio", "socket", "io", "pathlib"})
