"""CLI helpers: run ``mlops`` in-process (fast) or as the installed console script (real)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from mlops_toolkit.cli import main


@pytest.fixture
def mlops(tracking_uri):
    """Invoke the CLI in-process; the environment points at the session server."""
    runner = CliRunner()

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), env={"MLFLOW_TRACKING_URI": tracking_uri, **(env or {})})

    return run


@pytest.fixture
def mlops_process(mlops_script):
    return mlops_script


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """Bad input: exactly one readable line on stderr, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
