"""The watcher end to end: real MLflow server, real ``mlflow models serve`` processes.

The scenarios share one watcher and one model (deployments take ~7 s to start, so sharing
keeps the module around two minutes). Each scenario first brings the aliases it needs to
the state it starts from (``Watcher.serving``): run in file order that is a no-op, run alone
(``pytest -k``) it deploys what the scenario needs.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import mlops_toolkit as mt
from mlops_toolkit.ops.processes import pid_running as pid_alive
from tests.harness import (
    IRIS_COLUMNS,
    LoadClient,
    Watcher,
    http_json,
    move_alias_under_load,
    wait_for,
)

pytestmark = pytest.mark.slow
SECRET = "test-webhook-secret"
DEPLOY_TIMEOUT = 90


@pytest.fixture(scope="module")
def watcher(tracking_uri, served_model, tmp_path_factory):
    state = tmp_path_factory.mktemp("autoserve") / "state"
    targets = state.parent / "targets" / "serving.json"
    w = Watcher(tracking_uri, state, [served_model.name], "--targets-file", str(targets), secret=SECRET).start()
    w.targets_file = targets
    yield w
    w.stop()


def _pid(watcher: Watcher, version: int) -> int:
    return next(r["pid"] for r in watcher.records() if r["version"] == version)


def test_first_alias_is_served_through_the_gateway_and_directly(watcher, served_model):
    model, v1 = served_model.name, served_model.good[0]
    mt.set_alias(model, "Production", v1)
    endpoint = wait_for(lambda: watcher.endpoint_ready("Production", v1), DEPLOY_TIMEOUT, what="Production ready")
    status, headers, body = watcher.invoke(model, "Production")
    assert status == 200 and headers["X-Model-Version"] == str(v1)
    assert body == {"predictions": [0, 2]}
    direct = http_json("POST", endpoint["url"] + "/invocations", {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}})
    assert direct[0] == 200 and direct[2] == {"predictions": [0]}
    assert http_json("GET", f"{watcher.url}/serve/{model.replace(' ', '%20')}/Production/ping")[0] == 200


def _probe_targets(watcher: Watcher) -> dict[str, dict]:
    """The Prometheus file_sd groups the watcher wrote, by alias."""
    return {g["labels"]["alias"]: g for g in json.loads(watcher.targets_file.read_text())}


def test_serving_endpoints_are_written_for_prometheus_file_sd(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[0])
    endpoint = watcher.endpoints()["Production"]
    groups = wait_for(lambda: _probe_targets(watcher).get("Production") and _probe_targets(watcher), 5,
                      what="Production in the targets file")
    assert groups["Production"] == {
        "targets": [endpoint["url"] + "/ping"],
        "labels": {"model": served_model.name, "alias": "Production", "version": str(served_model.good[0])},
    }
    assert http_json("GET", groups["Production"]["targets"][0])[0] == 200  # what the blackbox probe will GET


def test_challenger_version_promoted_is_a_route_flip_within_a_second(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[0])
    model, (v1, v2, _) = served_model.name, served_model.good
    mt.set_alias(model, "challenger", v2)
    challenger = wait_for(lambda: watcher.endpoint_ready("challenger", v2), DEPLOY_TIMEOUT, what="challenger ready")
    v2_pid, v1_pid = _pid(watcher, v2), _pid(watcher, v1)

    mt.set_alias(model, "Production", v2)
    flipped = time.monotonic()
    production = wait_for(lambda: watcher.endpoint_ready("Production", v2), 5, interval=0.05)
    # Poll interval 0.5 s: the flip itself must add (almost) nothing on top.
    assert time.monotonic() - flipped < 1.5
    # Two aliases, one version: one deployment, same URL, same process.
    assert production["url"] == challenger["url"] and _pid(watcher, v2) == v2_pid
    assert watcher.invoke(model, "Production")[1]["X-Model-Version"] == str(v2)
    # v1 has no alias left: drained, then stopped.
    wait_for(lambda: not pid_alive(v1_pid), 20, what="v1 process stopped")
    wait_for(lambda: [r["version"] for r in watcher.records()] == [v2], 5, what="only v2 recorded")


def test_alias_move_under_load_loses_no_request(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[1])
    model, v3 = served_model.name, served_model.good[2]
    switches = watcher.metric("autoserve_switch_duration_seconds_count")
    client = move_alias_under_load(watcher, model, "Production", v3, DEPLOY_TIMEOUT)
    assert client.failed == 0, client.codes
    assert client.versions[str(served_model.good[1])] > 20 and client.versions[str(v3)] > 20
    assert watcher.metric("autoserve_switch_duration_seconds_count") == switches + 1  # the blue/green switch was timed


def test_broken_version_is_contained(watcher, served_model, mlflow_client):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[2])
    model, v3, broken = served_model.name, served_model.good[2], served_model.broken
    mt.set_alias(model, "Production", broken)
    endpoint = wait_for(
        lambda: (e := watcher.endpoints()["Production"]) and e["state"] == "failed" and e, DEPLOY_TIMEOUT,
        what="failed state",
    )
    assert endpoint["version"] == v3 and endpoint["desired_version"] == broken
    assert f"v{broken}" in endpoint["last_error"]
    status, headers, _ = watcher.invoke(model, "Production")
    assert status == 200 and headers["X-Model-Version"] == str(v3)  # the old version keeps serving
    tags = mlflow_client.get_model_version(model, str(broken)).tags
    assert "mlops.autoserve.error" in tags
    assert f'autoserve_deploy_total{{alias="Production",model="{model}",result="failed"}}' in watcher.metrics_text()
    assert mt.get_alias(model, "Production").version == broken  # never a rewritten alias
    mt.set_alias(model, "Production", v3)
    wait_for(lambda: watcher.endpoint_ready("Production", v3), 10)


def test_killed_deployment_is_restored(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[2])
    model, v3 = served_model.name, served_model.good[2]
    old_pid = _pid(watcher, v3)
    os.killpg(old_pid, signal.SIGKILL)
    # Seen dead first (the new process may get the same port: a ready route with the old URL
    # proves nothing), then routed to the new process.
    wait_for(lambda: watcher.endpoints()["Production"]["state"] != "ready", 15, interval=0.05, what="v3 seen dead")
    wait_for(lambda: watcher.endpoint_ready("Production", v3) and _pid(watcher, v3) != old_pid, DEPLOY_TIMEOUT,
             what="v3 restarted")
    assert watcher.invoke(model, "Production")[0] == 200


def test_restarted_watcher_adopts_running_deployments(watcher, served_model):
    """A watcher killed with -9 costs no request: the gateway is its own process and keeps
    serving the last route table; the restarted watcher reuses it and adopts every deployment."""
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[2])
    model = served_model.name
    before = {r["version"]: r["pid"] for r in watcher.records()}
    gateway_pid = watcher.gateway_pid()
    with LoadClient(watcher.port, f"/serve/{model.replace(' ', '%20')}/Production/invocations") as client:
        wait_for(lambda: client.sent > 20, 10, what="load running")
        watcher.stop(signal.SIGKILL)  # the watcher dies; its deployments and the gateway must not
        time.sleep(2)
        assert all(pid_alive(pid) for pid in before.values()) and pid_alive(gateway_pid)
        watcher.start()
        wait_for(lambda: watcher.endpoint_ready("Production", served_model.good[2]), 15, what="adopted")
        time.sleep(1)
    assert client.failed == 0 and client.sent > 100, client.codes
    assert watcher.gateway_pid() == gateway_pid  # reused, not restarted
    assert {r["version"]: r["pid"] for r in watcher.records()} == before
    assert "reusing the running gateway" in watcher.log_tail(100)


def test_tracking_server_outage_changes_nothing_that_serves(watcher, served_model, mlflow_server):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[2])
    model, v2 = served_model.name, served_model.good[1]
    mlflow_server.stop()
    try:
        with LoadClient(watcher.port, f"/serve/{model.replace(' ', '%20')}/Production/invocations") as client:
            wait_for(lambda: 'autoserve_reconcile_total{result="registry_error"}' in watcher.metrics_text(), 15)
            time.sleep(3)
        assert client.failed == 0 and client.sent > 50, client.codes
        assert http_json("GET", watcher.url + "/health")[0] == 200
    finally:
        mlflow_server.start()
    mt.set_alias(model, "Production", v2)  # recovered by itself: it follows the registry again
    wait_for(lambda: watcher.endpoint_ready("Production", v2), 40, what="recovered")
    assert "registry reachable again" in watcher.log_tail(200)


def test_alias_delete_removes_route_then_process(watcher, served_model):
    model, v3 = served_model.name, served_model.good[2]
    mt.set_alias(model, "canary", v3)
    wait_for(lambda: watcher.endpoint_ready("canary", v3), DEPLOY_TIMEOUT)
    v3_pid = _pid(watcher, v3)
    mt.delete_alias(model, "canary")
    wait_for(lambda: "canary" not in watcher.endpoints(), 5)
    status, _, body = watcher.invoke(model, "canary")
    assert status == 404 and body["error"] == f"no endpoint for {model}@canary"
    wait_for(lambda: not pid_alive(v3_pid), 20, what="canary's process stopped")
    assert "canary" not in _probe_targets(watcher)


def test_not_ready_endpoint_answers_503_json(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[1], challenger=served_model.good[1])
    model, v1 = served_model.name, served_model.good[0]
    mt.set_alias(model, "staging", v1)
    wait_for(lambda: "staging" in watcher.endpoints(), 5)
    status, _, body = watcher.invoke(model, "staging")
    assert status == 503 and body["error"] == "endpoint not ready" and body["state"] == "starting"
    wait_for(lambda: watcher.endpoint_ready("staging", v1), DEPLOY_TIMEOUT)


@pytest.mark.parametrize(
    "content_type, payload",
    [
        ("application/json", {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}}),
        ("application/json", {"dataframe_records": [dict(zip(IRIS_COLUMNS, [6.7, 3.0, 5.2, 2.3]))]}),
        ("application/json", {"instances": [dict(zip(IRIS_COLUMNS, [5.9, 3.0, 4.2, 1.5]))]}),
        ("application/json", {"inputs": {c: [v] for c, v in zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2])}}),
        ("application/json", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}),  # rejected by the schema: 400 passes through
        ("application/json", {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}, "params": {}}),
        ("text/csv", ",".join(IRIS_COLUMNS) + "\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"),
        ("application/json", "not json"),
        ("text/plain", "hello"),
    ],
    ids=["split", "records", "instances", "inputs-columns", "inputs-bare", "params", "csv", "bad-json", "text-plain"],
)
def test_every_payload_round_trips_unchanged(watcher, served_model, content_type, payload):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[1])
    import json as _json

    endpoint = watcher.endpoints()["Production"]
    raw = (payload if isinstance(payload, str) else _json.dumps(payload)).encode()
    headers = {"Content-Type": content_type}
    model_path = served_model.name.replace(" ", "%20")
    through = http_json("POST", f"{watcher.url}/serve/{model_path}/Production/invocations", raw=raw, headers=headers)
    direct = http_json("POST", endpoint["url"] + "/invocations", raw=raw, headers=headers)
    assert (through[0], through[2]) == (direct[0], direct[2])
    assert through[1]["X-Model-Version"] == str(endpoint["version"])
    if content_type in ("text/csv",) or "dataframe" in raw.decode() or "instances" in raw.decode():
        assert through[0] == 200 and "predictions" in through[2]


def test_webhook_signature_is_checked_and_wakes_the_watcher(tracking_uri, served_model, tmp_path):
    """A watcher that polls every 5 minutes follows a move within a second of a signed webhook."""
    from mlflow.webhooks.delivery import _generate_hmac_signature  # MLflow's own signer

    model, v2 = served_model.name, served_model.good[1]
    slow = Watcher(tracking_uri, tmp_path / "state", [model], "--aliases", "Production,shadow",
                   poll_interval=300, secret=SECRET).start()
    try:
        wait_for(lambda: slow.endpoint_ready("Production", v2), DEPLOY_TIMEOUT)
        mt.set_alias(model, "shadow", v2)
        body = '{"entity": "model_version_alias", "action": "created", "data": {"name": "x", "alias": "shadow", "version": "2"}}'
        stamp = str(int(time.time()))
        bad = {"X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": stamp, "X-MLflow-Signature": "v1,AAAA"}
        status, _, reply = http_json("POST", slow.watcher_url + "/webhooks/mlflow", raw=body.encode(), headers=bad)
        assert status == 401 and "signature does not match" in reply["error"]
        stale_stamp = str(int(time.time()) - 3600)
        stale = {"X-MLflow-Delivery-Id": "d2", "X-MLflow-Timestamp": stale_stamp,
                 "X-MLflow-Signature": _generate_hmac_signature(SECRET, "d2", stale_stamp, body)}
        assert http_json("POST", slow.watcher_url + "/webhooks/mlflow", raw=body.encode(), headers=stale)[0] == 401
        time.sleep(1)
        assert "shadow" not in slow.endpoints()  # rejected deliveries woke nothing

        good = {"X-MLflow-Delivery-Id": "d3", "X-MLflow-Timestamp": stamp,
                "X-MLflow-Signature": _generate_hmac_signature(SECRET, "d3", stamp, body)}
        malformed = {**good, "X-MLflow-Timestamp": "not-a-time"}
        status, _, reply = http_json("POST", slow.watcher_url + "/webhooks/mlflow", raw=body.encode(), headers=malformed)
        assert status == 401 and "Unix timestamp" in reply["error"]
        assert http_json("POST", slow.watcher_url + "/webhooks/mlflow", raw=b"x" * 70_000, headers=good)[0] == 413
        sent = time.monotonic()
        assert http_json("POST", slow.watcher_url + "/webhooks/mlflow", raw=body.encode(), headers=good)[0] == 200
        wait_for(lambda: slow.endpoint_ready("shadow", v2), 2, interval=0.05)
        assert time.monotonic() - sent < 1.0
    finally:
        assert slow.stop() == 0
        mt.delete_alias(model, "shadow")


def test_serve_status_shows_what_is_serving(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[1], challenger=served_model.good[1], staging=served_model.good[0])
    import json as _json

    from click.testing import CliRunner

    from mlops_toolkit.cli import main

    runner = CliRunner()
    table = runner.invoke(main, ["serve", "status", "--gateway-admin", watcher.admin_url])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "ALIAS", "VERSION", "STATE"]
    production = next(line for line in lines if " Production " in line)
    assert f"v{served_model.good[1]}" in production and " ready " in production
    data = _json.loads(runner.invoke(main, ["serve", "status", "--gateway-admin", watcher.admin_url, "--json"]).stdout)
    assert {e["alias"] for e in data} >= {"Production", "challenger", "staging"}


def test_second_watcher_on_a_busy_gateway_port_fails_cleanly(watcher, served_model, mlops_script):
    result = mlops_script("autoserve", "--tracking-uri", watcher.tracking_uri, "--port", str(watcher.port),
                          "--state-dir", str(watcher.state_dir.parent / "other"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: gateway port 127.0.0.1:{watcher.port} is already in use; pick another with --port"
    ), result.stderr


CONTRACT_METRICS = [
    "autoserve_endpoint_info", "autoserve_reconcile_total", "autoserve_reconcile_duration_seconds",
    "autoserve_registry_requests_total", "autoserve_deploy_total", "autoserve_switch_duration_seconds",
    "autoserve_requests_total", "autoserve_request_duration_seconds", "autoserve_last_reconcile_timestamp_seconds",
]


def test_metrics_contract_and_json_logs(watcher, served_model):
    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[1])
    text = watcher.metrics_text()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in CONTRACT_METRICS:
        assert any(e == name or e.startswith(name + "_") for e in exported), name
    assert f'autoserve_endpoint_info{{alias="Production",model="{served_model.name}",state="ready",version="{served_model.good[1]}"}} 1.0' in text
    import json as _json

    lines = [line for line in watcher.log_path.read_text().splitlines() if line.startswith("{")]
    records = [_json.loads(line) for line in lines]
    assert records and all({"level", "logger", "message", "timestamp"} <= r.keys() for r in records)
    assert any(r["message"] == "route switched" and r["model"] == served_model.name for r in records)


def test_unknown_routes_share_one_series_whatever_the_urls(watcher, served_model):
    """Labels come from the route table, never from the URL: 2,000 distinct unknown routes
    add one series, not 2,000 (each was a series and a deque for good)."""
    import http.client

    watcher.serving(served_model.name, DEPLOY_TIMEOUT, Production=served_model.good[1])
    before = len(watcher.metrics_text().splitlines())
    conn = http.client.HTTPConnection("127.0.0.1", watcher.port, timeout=10)
    for i in range(2000):
        conn.request("POST", f"/serve/junk{i}/a{i}/invocations", body=b"{}", headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        assert response.status == 404
    conn.close()
    text = watcher.metrics_text()
    assert len(text.splitlines()) <= before + 10, len(text.splitlines()) - before
    assert "junk" not in text
    assert watcher.metric("autoserve_requests_total", model="_unknown", code="404") >= 2000


def test_a_gateway_that_dies_is_started_again_by_the_watcher(watcher, served_model):
    model = served_model.name
    watcher.serving(model, DEPLOY_TIMEOUT, Production=served_model.good[1])
    pid = watcher.gateway_pid()
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: watcher.gateway_pid() not in (None, pid), 20, interval=0.05, what="a new gateway recorded")
    status, headers, _ = wait_for(lambda: (r := _try_invoke(watcher, model))[0] == 200 and r, 20, interval=0.05,
                                  what="the gateway answering again")
    print(f"gateway kill -9 -> answering again: {time.monotonic() - killed:.2f} s")
    assert headers["X-Model-Version"] == str(served_model.good[1])
    assert watcher.metric("autoserve_gateway_restarts_total") == 1


def _try_invoke(watcher: Watcher, model: str):
    try:
        return watcher.invoke(model, "Production")
    except OSError:
        return (0, {}, None)


def test_clean_shutdown_leaves_nothing_behind(watcher):
    records = watcher.records()
    assert records, "expected running deployments before shutdown"
    assert watcher.stop(signal.SIGTERM) == 0
    assert not any(pid_alive(r["pid"]) for r in records)
    assert watcher.records() == []
    assert not any((watcher.state_dir / "tmp").iterdir())  # models serve's temp downloads removed
    from mlops_toolkit.ops.processes import port_is_open

    assert not any(port_is_open("127.0.0.1", r["port"]) for r in records)
    assert not port_is_open("127.0.0.1", watcher.port)
    assert json.loads(watcher.targets_file.read_text()) == []  # nothing left for the blackbox to probe
