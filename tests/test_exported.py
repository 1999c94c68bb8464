"""The public surface: a sorted __all__, and the core never imports its schedulers."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import rangefetch

PACKAGE = Path(rangefetch.__file__).parent
SCHEDULERS = ("rangefetch.producer", "rangefetch.worker", "producer", "worker")
# rangefetch/producer and rangefetch/worker (symlinks to the top-level
# folders) are the schedulers; the program names their commands.
NOT_CORE = {"producer", "worker", "program.py"}


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


def imported_modules(tree: ast.AST, package: str = "") -> set[str]:
    """Every module ``tree`` imports, by absolute name (``package``: the file's, for relative imports)."""
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            modules.add(base)
            # `from . import producer` imports a module too.
            modules.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            # importlib.import_module("rangefetch.worker.x") / __import__("worker")
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    modules.add(arg.value)
    return modules


def imported_roots(tree: ast.AST) -> set[str]:
    return {module.split(".")[0] for module in imported_modules(tree) if module}


def schedulers_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == s or m.startswith(f"{s}.") for s in SCHEDULERS))


def test_core_never_imports_the_schedulers() -> None:
    offenders = {}
    core = [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in NOT_CORE]
    assert PACKAGE / "cli.py" in core and PACKAGE / "distributed" / "store.py" in core
    for path in core:
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        package = ".".join(("rangefetch", *parts[:-1]))
        found = schedulers_in(imported_modules(ast.parse(path.read_text(), filename=str(path)), package))
        if found:
            offenders[path.relative_to(PACKAGE).as_posix()] = found
    assert offenders == {}


def test_the_import_scan_sees_what_it_looks_for() -> None:
    source = "import producer.jobs\nfrom rangefetch.worker import x\nimportlib.import_module('worker.settings')\n"
    assert schedulers_in(imported_modules(ast.parse(source))) == [
        "producer.jobs", "rangefetch.worker", "rangefetch.worker.x", "worker.settings",
    ]  # fmt: skip
    relative = "from . import worker\nfrom ..producer.cli import enqueue\nfrom .sink import Sink"
    found = schedulers_in(imported_modules(ast.parse(relative), "rangefetch.distributed"))
    assert found == ["rangefetch.producer.cli", "rangefetch.producer.cli.enqueue"]
    assert schedulers_in(imported_modules(ast.parse("from . import worker"), "rangefetch")) == ["rangefetch.worker"]


def test_the_schedulers_install_inside_the_rangefetch_namespace() -> None:
    import rangefetch.producer
    import rangefetch.worker

    for module in (rangefetch.producer, rangefetch.worker):
        assert Path(module.__file__ or "").parent.parent == PACKAGE, module.__file__
    built = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    packages = built["tool"]["setuptools"]["packages"]
    assert all(name == "rangefetch" or name.startswith("rangefetch.") for name in packages), packages
    assert "rangefetch.producer" in packages and "rangefetch.worker" in packages
    assert "entry-points" not in built["project"], "the program names its commands (rangefetch/program.py)"


def test_plan_does_no_io_and_never_imports_httpx() -> None:
    roots = imported_roots(ast.parse((PACKAGE / "plan.py").read_text()))
    assert roots.isdisjoint({"httpx", "os", "asyncio", "socket", "io", "pathlib"})


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


CORE_MAIN = "import sys; sys.argv[0] = 'rangefetch'; from rangefetch.cli import main; main()"


def test_the_core_alone_has_no_distributed_commands() -> None:
    no_mode = _python(CORE_MAIN, "get", "http://127.0.0.1:9/f.bin", "--redis", "redis://127.0.0.1:9/0")
    assert no_mode.returncode == 2, no_mode.stderr
    assert no_mode.stderr.splitlines() == [
        "rangefetch: error: get --redis is not available: this program has no distributed mode"
    ]
    no_worker = _python(CORE_MAIN, "worker")
    assert no_worker.returncode == 2 and "No such command 'worker'" in no_worker.stderr, no_worker.stderr


def test_the_program_names_every_command_and_imports_each_on_first_use() -> None:
    from rangefetch.program import EXTENSIONS

    listed = _python("import sys; sys.argv[0] = 'rangefetch'; from rangefetch.program import main; main()", "--help")
    assert listed.returncode == 0, listed.stderr
    commands = {line.split()[0] for line in listed.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert commands == {"get", *EXTENSIONS.commands}
    loaded = _python(
        "import sys; import rangefetch.program, rangefetch.cli; print(sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('arq', 'redis') or m.startswith(('rangefetch.worker', 'rangefetch.producer'))))"
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout


MAX_MODULE_LINES = 400  # small modules named for what they hold


def test_no_module_is_over_400_lines() -> None:
    # rglob does not walk the symlinks rangefetch/producer and rangefetch/worker: walked from them.
    files = [*PACKAGE.rglob("*.py"), *(PACKAGE / "producer").rglob("*.py"), *(PACKAGE / "worker").rglob("*.py")]
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in files}
    assert {"producer/cli.py", "worker/jobs.py", "distributed/store.py"} <= set(sizes)  # the schedulers too
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
