"""CLI errors of ``mlops autoserve`` and ``mlops serve status`` that need no deployment."""

from __future__ import annotations

from mlops_toolkit.ops.processes import free_port
from tests.mlops_toolkit.cli.conftest import assert_one_line_error


def test_serve_status_without_a_gateway(mlops_script):
    port = free_port()
    result = mlops_script("serve", "status", "--gateway-admin", f"http://127.0.0.1:{port}")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, f"cannot read http://127.0.0.1:{port}/endpoints")


def test_autoserve_pointed_at_something_that_is_not_mlflow(mlops_script):
    """A URI that answers, but not like MLflow, is a typo: fail at once (an outage is not)."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = mlops_script("autoserve", "--tracking-uri", uri, "--port", str(free_port()),
                              "--admin-port", str(free_port()), "--watcher-port", str(free_port()))
    finally:
        server.shutdown()
    assert result.returncode == 1
    assert_one_line_error(result.stderr, uri, "is it an MLflow tracking server?")


def test_autoserve_starts_while_the_tracking_server_is_down(tmp_path, mlops_script):
    """An outage at start: the gateway comes up on the last table and the watcher retries.
    A second watcher on the same state dir is refused: they would fight over deployments."""
    from tests.harness import Watcher, http_json

    uri = f"http://127.0.0.1:{free_port()}"
    watcher = Watcher(uri, tmp_path / "state", ["any"]).start()
    try:
        assert http_json("GET", watcher.url + "/health")[0] == 200
        assert http_json("GET", watcher.admin_url + "/endpoints")[2] == []
        assert "serving the last published routes and retrying" in watcher.log_tail()
        second = mlops_script("autoserve", "--tracking-uri", uri, "--state-dir", str(tmp_path / "state"),
                              "--port", str(free_port()), "--admin-port", str(free_port()),
                              "--watcher-port", str(free_port()), "--no-gateway")
        assert second.returncode == 2
        assert_one_line_error(second.stderr, f"another watcher (pid {watcher.process.pid}) uses the state dir")
    finally:
        assert watcher.stop() == 0
    assert watcher.gateway_pid() is None  # SIGTERM stopped the gateway it started


def test_autoserve_rejects_bad_options(mlops_script, tracking_uri):
    same = mlops_script("autoserve", "--port", "9100", "--admin-port", "9100", "--tracking-uri", tracking_uri)
    assert same.returncode == 2
    assert_one_line_error(same.stderr, "--port and --admin-port must differ (both 9100)")
    bad_range = mlops_script("autoserve", "--port-range", "9000", "--tracking-uri", tracking_uri)
    assert bad_range.returncode == 2 and "expected LOW-HIGH" in bad_range.stderr
    bad_strategy = mlops_script("autoserve", "--strategy", "yolo")
    assert bad_strategy.returncode == 2 and "'yolo' is not one of" in bad_strategy.stderr
    bad_size = mlops_script("autoserve", "--runtime", "swarm", "--swarm-reserve-memory", "lots")
    assert bad_size.returncode == 2
    assert_one_line_error(bad_size.stderr, "--swarm-reserve-memory 'lots' is not a size like 512m or 2g")


def test_autoserve_rejects_a_targets_file_it_cannot_write(mlops_script, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the targets directory should be")
    result = mlops_script("autoserve", "--targets-file", str(blocker / "serving.json"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"cannot write --targets-file {blocker / 'serving.json'}")


def test_status_shows_an_environment_build_on_its_route():
    from mlops_autoserve.cli import _building

    endpoint = {"building": {"version": 3, "env": "1f0c2a9e77aa0b1c", "seconds": 4.2,
                             "progress": "Resolved 80 packages in 1.20s"}}
    assert _building(endpoint) == " [v3 environment 1f0c2a9e building 4 s: Resolved 80 packages in 1.20s]"
    assert _building({"building": None}) == "" and _building({}) == ""
