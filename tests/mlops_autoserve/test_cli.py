"""CLI errors of ``mlops autoserve`` and ``mlops serve status`` that need no deployment."""

from __future__ import annotations

from mlops_toolkit.local_server import free_port
from tests.mlops_toolkit.cli.conftest import assert_one_line_error


def test_serve_status_without_a_gateway(mlops_script):
    port = free_port()
    result = mlops_script("serve", "status", "--gateway", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, f"cannot read http://127.0.0.1:{port}/endpoints")


def test_autoserve_with_unreachable_tracking_server(mlops_script):
    uri = f"http://127.0.0.1:{free_port()}"
    result = mlops_script("autoserve", "--tracking-uri", uri)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, uri)


def test_autoserve_rejects_bad_options(mlops_script, tracking_uri):
    bad_range = mlops_script("autoserve", "--port-range", "9000", "--tracking-uri", tracking_uri)
    assert bad_range.returncode == 2 and "expected LOW-HIGH" in bad_range.stderr
    bad_strategy = mlops_script("autoserve", "--strategy", "yolo")
    assert bad_strategy.returncode == 2 and "'yolo' is not one of" in bad_strategy.stderr


def test_autoserve_rejects_a_targets_file_it_cannot_write(mlops_script, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the targets directory should be")
    result = mlops_script("autoserve", "--targets-file", str(blocker / "serving.json"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"cannot write --targets-file {blocker / 'serving.json'}")
