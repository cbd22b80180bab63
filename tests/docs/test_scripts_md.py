"""docs/SCRIPTS.md must show what every ``mlops`` command really prints for --help, and
name every DAG: a changed option without a changed doc fails here."""

from __future__ import annotations

from collections.abc import Iterator

import click
from click.testing import CliRunner

from mlops_toolkit.cli import main
from tests.conftest import repo_root

SCRIPTS = repo_root() / "docs" / "SCRIPTS.md"


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="mlops", terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_help_is_in_scripts_md():
    text = SCRIPTS.read_text()
    paths = list(commands())
    assert ("alias", "set") in paths and ("autoserve",) in paths and len(paths) >= 15
    stale = [" ".join(("mlops", *p)) for p in paths
             if f"## {' '.join(('mlops', *p))}\n\n```text\n{help_text(p)}```" not in text]
    assert not stale, f"docs/SCRIPTS.md is out of date for: {', '.join(stale)}"


def test_every_dag_is_in_scripts_md():
    dags = sorted(p.stem for p in (repo_root() / "dags").glob("dag_*.py"))
    assert len(dags) == 4
    text = SCRIPTS.read_text()
    assert [d for d in dags if f"`{d}`" not in text] == []
