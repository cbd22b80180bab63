"""The tree reads like the architecture: the library never depends on the service, the core
never on batch or operations."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import repo_root

LIBRARY = repo_root() / "mlops_toolkit"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_library_never_imports_the_service():
    offenders = {str(p.relative_to(LIBRARY)): sorted(n for n in _imports(p) if n.startswith("mlops_autoserve"))
                 for p in LIBRARY.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_core_never_imports_batch_or_operations():
    core = [p for p in LIBRARY.glob("*.py")]
    assert len(core) >= 10
    for path in core:
        layered = sorted(n for n in _imports(path) if n.startswith(("mlops_toolkit.batch", "mlops_toolkit.ops")))
        assert layered == [], f"{path.name} imports {layered}"


def test_the_notebook_api_loads_no_service_batch_or_operations_module():
    code = ("import sys, mlops_toolkit as mt; mt.set_alias; mt.start_run; "
            "print(sorted(m for m in sys.modules if m.startswith(('mlops_autoserve', 'mlops_toolkit.batch', "
            "'mlops_toolkit.ops', 'airflow', 'sklearn'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_service_commands_come_from_the_entry_point():
    from importlib.metadata import entry_points

    from mlops_toolkit.cli import main

    registered = {e.name: e.value for e in entry_points(group="mlops.commands")}
    assert registered == {"autoserve": "mlops_autoserve.cli:autoserve", "gateway": "mlops_autoserve.cli:gateway",
                          "serve": "mlops_autoserve.cli:serve"}
    import click

    assert set(registered) <= set(main.list_commands(click.Context(main)))
    assert main.get_command(click.Context(main), "autoserve").name == "autoserve"
