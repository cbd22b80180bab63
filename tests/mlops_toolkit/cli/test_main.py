"""The ``mlops`` entry point: global options, help everywhere, fast failure, no tracebacks."""

from __future__ import annotations

import time

import pytest

from mlops_toolkit import __version__
from mlops_toolkit.ops.processes import free_port
from tests.mlops_toolkit.cli.conftest import assert_one_line_error

COMMANDS = [
    [], ["alias"], ["alias", "set"], ["alias", "get"], ["alias", "list"], ["alias", "delete"],
    ["alias", "history"], ["alias", "rollback"], ["models"], ["models", "list"], ["models", "versions"],
    ["promote"], ["doctor"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "mlops")
def test_help_everywhere(mlops, command):
    result = mlops(*command, "--help")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ")
    if command and command[-1] not in ("alias", "models"):
        assert "--tracking-uri" in result.stdout


def test_version(mlops):
    assert mlops("--version").stdout.strip() == f"mlops, version {__version__}"


def test_command_level_tracking_uri_wins(mlops, make_model, tracking_uri):
    model = make_model(versions=1)
    dead = f"http://127.0.0.1:{free_port()}"
    result = mlops("--tracking-uri", dead, "models", "versions", model, "--tracking-uri", tracking_uri)
    assert result.exit_code == 0 and result.stdout.splitlines()[1].startswith("v1")


def test_installed_script_unreachable_uri_fails_fast(mlops_process):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = mlops_process("alias", "list", "--tracking-uri", uri, env={"MLOPS_DEBUG": ""})
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and elapsed < 10, (elapsed, result.stderr)
    assert_one_line_error(result.stderr, uri)


def test_installed_script_bad_input_no_traceback(mlops_process, tracking_uri, unique_name):
    missing = unique_name("missing")
    result = mlops_process("alias", "set", "Production", "--model", missing, env={"MLFLOW_TRACKING_URI": tracking_uri})
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"registered model '{missing}' does not exist")


def test_installed_script_sets_alias(mlops_process, make_model, tracking_uri):
    model = make_model(versions=2)
    result = mlops_process("alias", "set", "Production", env={"MLFLOW_TRACKING_URI": tracking_uri, "MLOPS_MODEL_NAME": model})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{model}@Production: none -> v2"
