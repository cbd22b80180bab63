"""Serving that survives one failure, on real ``mlflow models serve`` processes: replicas
behind the gateway, a replica killed or hung under load, the proxy's limits, and a second
gateway reading the same route table on its own.

Scenarios share one watcher (two replicas of one version) and run in file order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mlops_toolkit as mt
from mlops_toolkit.ops.processes import free_port
from mlops_toolkit.ops.processes import pid_running as pid_alive
from tests.harness import LoadClient, Watcher, http_json, wait_for

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 120
TIMEOUT_S = 3  # the gateway's --request-timeout here


@pytest.fixture(scope="module")
def replicated(tracking_uri, served_model, tmp_path_factory):
    state = tmp_path_factory.mktemp("replicas") / "state"
    w = Watcher(tracking_uri, state, [served_model.name], "--aliases", "Production", "--replicas", "2",
                "--request-timeout", str(TIMEOUT_S)).start()
    mt.set_alias(served_model.name, "Production", served_model.good[0])
    wait_for(lambda: (e := w.endpoints().get("Production")) and e["ready_replicas"] == 2 and e, DEPLOY_TIMEOUT,
             what="two ready replicas")
    yield w
    w.stop()


def _path(model: str) -> str:
    return f"/serve/{model.replace(' ', '%20')}/Production/invocations"


def _endpoints(admin_url: str) -> list | None:
    try:
        return http_json("GET", admin_url + "/endpoints")[2]
    except OSError:  # not listening yet
        return None


def _replica_pids(watcher: Watcher, version: int) -> dict[int, int]:
    return {r.get("replica", 0): r["pid"] for r in watcher.records() if r["version"] == version}


def test_two_replicas_are_routed_and_serve(replicated, served_model):
    endpoint = replicated.endpoints()["Production"]
    assert endpoint["state"] == "ready" and endpoint["version"] == served_model.good[0]
    assert len({r["url"] for r in endpoint["replicas"]}) == 2 and {r["index"] for r in endpoint["replicas"]} == {0, 1}
    assert set(_replica_pids(replicated, served_model.good[0])) == {0, 1}
    with LoadClient(replicated.port, _path(served_model.name)) as load:
        wait_for(lambda: load.sent > 200, 20, what="200 requests")
    assert load.failed == 0, load.codes


def test_one_replica_killed_under_load_costs_no_request(replicated, served_model):
    v1 = served_model.good[0]
    pids = _replica_pids(replicated, v1)
    with LoadClient(replicated.port, _path(served_model.name)) as load:
        wait_for(lambda: load.sent > 50, 10, what="load running")
        os.killpg(pids[0], signal.SIGKILL)  # replica 0 takes a lone client's requests (lowest index on ties)
        wait_for(lambda: (p := _replica_pids(replicated, v1).get(0)) and p != pids[0]
                 and replicated.endpoints()["Production"]["ready_replicas"] == 2, DEPLOY_TIMEOUT,
                 what="replica 0 restarted")
        time.sleep(1)
    assert load.failed == 0 and load.sent > 200, load.codes


def test_a_hung_replica_fails_only_its_inflight_requests_then_is_ejected(replicated, served_model):
    v1 = served_model.good[0]
    pid = _replica_pids(replicated, v1)[0]
    with LoadClient(replicated.port, _path(served_model.name)) as load:
        wait_for(lambda: load.sent > 50, 10, what="load running")
        os.killpg(pid, signal.SIGSTOP)
        try:
            hung = time.monotonic()
            wait_for(lambda: any(r["state"] == "ejected" for r in replicated.endpoints()["Production"]["replicas"])
                     or replicated.endpoints()["Production"]["ready_replicas"] < 2, 30, what="hung replica out")
            out = time.monotonic()
            time.sleep(3)
        finally:
            os.killpg(pid, signal.SIGCONT)
        wait_for(lambda: replicated.endpoints()["Production"]["ready_replicas"] == 2, 30, what="re-admitted")
    failed = [code for t, code, _ in load.events if t >= hung and code != "200"]
    assert set(failed) <= {"504"} and len(failed) <= 3, load.codes  # closed loop: one request at a time
    assert load.failures_between(out + TIMEOUT_S + 0.5, time.monotonic()) == 0, load.codes


def test_a_200_mb_body_is_refused_before_it_is_read(replicated, served_model):
    sock = socket.create_connection(("127.0.0.1", replicated.port), timeout=5)
    started = time.monotonic()
    sock.sendall(f"POST {_path(served_model.name)} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {200 * 1024 * 1024}\r\n\r\n".encode() + b"[" * 65536)
    reply = sock.recv(4096).decode(errors="replace")
    sock.close()
    assert reply.startswith("HTTP/1.1 413") and '"error"' in reply, reply[:300]
    assert time.monotonic() - started < 1.0
    metrics = replicated.metrics_text()
    assert 'code="413"' in metrics


def test_a_second_gateway_serves_the_same_table_with_its_own_limits(replicated, served_model, tmp_path):
    """`mlops gateway` alone: no watcher of its own, bearer token, per-route in-flight cap."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port, admin = free_port(), free_port()
    log = open(tmp_path / "gateway.log", "ab")
    gateway = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlops"), "gateway", "--state-dir", str(replicated.state_dir),
         "--port", str(port), "--admin-port", str(admin), "--auth-token-file", str(token),
         "--max-inflight", "1", "--request-timeout", str(TIMEOUT_S)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}{_path(served_model.name)}"
    try:
        wait_for(lambda: _endpoints(f"http://127.0.0.1:{admin}"), 30, what="second gateway")
        body = {"dataframe_split": {"columns": ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                                                "petal width (cm)"], "data": [[5.1, 3.5, 1.4, 0.2]]}}
        status, headers, reply = http_json("POST", url, body)
        assert status == 401 and reply["error"] == "missing or wrong bearer token" and headers["WWW-Authenticate"] == "Bearer"
        auth = {"Authorization": "Bearer s3cret-token"}
        status, headers, reply = http_json("POST", url, body, headers=auth)
        assert status == 200 and headers["X-Model-Version"] == str(served_model.good[0])

        pids = _replica_pids(replicated, served_model.good[0])
        for pid in pids.values():
            os.killpg(pid, signal.SIGSTOP)
        try:
            first: dict = {}
            hanging = threading.Thread(target=lambda: first.update(r=http_json("POST", url, body, headers=auth)))
            hanging.start()
            time.sleep(0.5)
            status, headers, reply = http_json("POST", url, body, headers=auth)
            assert status == 429 and headers["Retry-After"] == "1" and "1 requests in flight" in reply["error"]
            hanging.join(TIMEOUT_S + 5)
            assert first["r"][0] == 504 and "did not answer within" in first["r"][2]["error"]
        finally:
            for pid in pids.values():
                os.killpg(pid, signal.SIGCONT)
    finally:
        gateway.terminate()
        code = gateway.wait(15)
    assert code == 0, (code, (tmp_path / "gateway.log").read_text()[-2000:])


def test_lowering_the_replica_tag_scales_down_without_a_failed_request(replicated, served_model, mlflow_client):
    v1 = served_model.good[0]
    wait_for(lambda: replicated.endpoints()["Production"]["ready_replicas"] == 2, 30, what="two replicas")
    extra = _replica_pids(replicated, v1)[1]
    with LoadClient(replicated.port, _path(served_model.name)) as load:
        wait_for(lambda: load.sent > 50, 10, what="load running")
        mlflow_client.set_registered_model_tag(served_model.name, "mlops.autoserve.replicas", "1")
        try:
            wait_for(lambda: not pid_alive(extra), 30, what="replica 1 stopped")
            time.sleep(1)
        finally:
            mlflow_client.delete_registered_model_tag(served_model.name, "mlops.autoserve.replicas")
    assert load.failed == 0, load.codes
    assert replicated.endpoints()["Production"]["ready_replicas"] == 1
