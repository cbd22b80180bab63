"""The Docker runtime against a real Docker engine (CI installs docker.io and starts dockerd).

Containers use host networking and serve on loopback ports: tests talk only to 127.0.0.1.
The serving image is built by .ci/run from a locally built Debian base (no registry here).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

import mlops_toolkit as mt
from tests.conftest import need
from tests.harness import (
    LoadClient,
    Watcher,
    live_restore_enabled,
    move_alias_under_load,
    restart_docker_daemon,
    wait_for,
)

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 120


@pytest.fixture(scope="module")
def watcher(docker_client, serving_image, tracking_uri, served_model, tmp_path_factory):
    state = tmp_path_factory.mktemp("autoserve-docker") / "state"
    w = Watcher(tracking_uri, state, [served_model.name], "--runtime", "docker", "--docker-image", serving_image,
                "--aliases", "Production,dockerprod,dockercanary").start()
    yield w
    assert w.stop() == 0
    leftovers = docker_client.containers.list(all=True, filters={"label": "mlops.autoserve=true"})
    assert [c.name for c in leftovers if state.name in str(c.labels)] == []


def _containers(client, model: str) -> dict[int, object]:
    found = client.containers.list(filters={"label": ["mlops.autoserve=true", f"mlops.model={model}"]})
    return {int(c.labels["mlops.version"]): c for c in found}


def test_first_deploy_runs_a_labelled_container(watcher, served_model, docker_client):
    model, v1 = served_model.name, served_model.good[0]
    mt.set_alias(model, "dockerprod", v1)
    wait_for(lambda: watcher.endpoint_ready("dockerprod", v1), DEPLOY_TIMEOUT, what="container ready")
    status, headers, body = watcher.invoke(model, "dockerprod")
    assert status == 200 and headers["X-Model-Version"] == str(v1) and body == {"predictions": [0, 2]}
    container = _containers(docker_client, model)[v1]
    assert container.labels["mlops.aliases"] == "dockerprod"
    assert container.attrs["HostConfig"]["Init"] is True
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    host = container.attrs["HostConfig"]
    assert container.attrs["Config"]["User"] == "10001"  # the image's unprivileged user
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert (host["Memory"], host["NanoCpus"]) == (2 * 1024**3, 10**9)
    assert host["LogConfig"] == {"Type": "json-file", "Config": {
        "max-size": "10m", "max-file": "3", "labels": "mlops.autoserve,mlops.model,mlops.version", "tag": "{{.Name}}"}}
    # what Promtail reads: the container's own log file, each line naming model and version
    import jmespath

    from tests.monitoring.test_logs import PROMTAIL

    envelope = PROMTAIL["scrape_configs"][0]["pipeline_stages"][0]["json"]["expressions"]
    with open(container.attrs["LogPath"]) as log_file:
        line = json.loads(log_file.readline())
    fields = {name: jmespath.search(expression, line) for name, expression in envelope.items()}
    assert (fields["autoserve"], fields["model"], fields["version"], fields["container"]) == (
        "true", model, str(v1), container.name)
    assert container.name.startswith("mlops-serve-") and " " not in container.name  # model name has a space


def test_alias_move_through_the_gateway_loses_no_request(watcher, served_model, docker_client):
    model, v2 = served_model.name, served_model.good[1]
    client = move_alias_under_load(watcher, model, "dockerprod", v2, DEPLOY_TIMEOUT)
    assert client.failed == 0, client.codes
    wait_for(lambda: set(_containers(docker_client, model)) == {v2}, 30, what="old container removed")


def test_broken_version_is_contained(watcher, served_model):
    model, v2, broken = served_model.name, served_model.good[1], served_model.broken
    mt.set_alias(model, "dockerprod", broken)
    wait_for(lambda: watcher.endpoints()["dockerprod"]["state"] == "failed", DEPLOY_TIMEOUT, what="failed")
    status, headers, _ = watcher.invoke(model, "dockerprod")
    assert status == 200 and headers["X-Model-Version"] == str(v2)
    mt.set_alias(model, "dockerprod", v2)
    wait_for(lambda: watcher.endpoint_ready("dockerprod", v2), 15)


def test_missing_image_is_contained(docker_client, tracking_uri, served_model, tmp_path):
    model, v1 = served_model.name, served_model.good[0]
    other = Watcher(tracking_uri, tmp_path / "state", [model], "--runtime", "docker", "--aliases", "dockermissing",
                    "--docker-image", "mlops-toolkit/no-such-image:0").start()
    try:
        mt.set_alias(model, "dockermissing", v1)
        endpoint = wait_for(lambda: (e := other.endpoints().get("dockermissing")) and e["state"] == "failed" and e,
                            30, what="failed state")
        assert "could not start" in endpoint["last_error"] and "no-such-image:0 is not on this Docker host" \
            in endpoint["last_error"]  # never pulled from a registry
        assert other.invoke(model, "dockermissing")[0] == 503
    finally:
        assert other.stop() == 0
        mt.delete_alias(model, "dockermissing")


def test_restarted_watcher_adopts_the_same_containers(watcher, served_model, docker_client):
    before = {v: c.id for v, c in _containers(docker_client, served_model.name).items()}
    watcher.stop(signal.SIGKILL)
    watcher.start()
    wait_for(lambda: watcher.endpoint_ready("dockerprod", served_model.good[1]), 20, what="adopted")
    assert {v: c.id for v, c in _containers(docker_client, served_model.name).items()} == before


def test_container_killed_from_outside_is_replaced(watcher, served_model, docker_client):
    model, v2 = served_model.name, served_model.good[1]
    old = _containers(docker_client, model)[v2]
    old.kill()
    # Seen dead first, then served by the replacement (not the route table from before the kill).
    wait_for(lambda: watcher.endpoints()["dockerprod"]["state"] != "ready", 15, interval=0.05, what="seen dead")
    wait_for(lambda: watcher.endpoint_ready("dockerprod", v2) and v2 in _containers(docker_client, model)
             and _containers(docker_client, model)[v2].id != old.id, DEPLOY_TIMEOUT, what="replacement")
    assert watcher.invoke(model, "dockerprod")[0] == 200


def test_daemon_restart_with_live_restore_costs_no_request(watcher, served_model, docker_client):
    """With live-restore the containers keep serving while dockerd restarts; the watcher rides
    out the unanswered API (cycles fail, nothing is restarted) and the gateway never notices."""
    need(live_restore_enabled(), "the Docker daemon runs without live-restore (.ci/run enables it)")
    model, v2 = served_model.name, served_model.good[1]
    wait_for(lambda: watcher.endpoint_ready("dockerprod", v2), DEPLOY_TIMEOUT, what="dockerprod ready")
    before = _containers(docker_client, model)[v2].id
    with LoadClient(watcher.port, f"/serve/{model.replace(' ', '%20')}/dockerprod/invocations") as load:
        wait_for(lambda: load.sent > 50, 10, what="load running")
        restart_docker_daemon()
        time.sleep(3)
    assert load.failed == 0 and load.sent > 200, load.codes
    assert _containers(docker_client, model)[v2].id == before  # the same container, never replaced
    wait_for(lambda: watcher.endpoint_ready("dockerprod", v2), 20, what="watcher sees it again")


def test_alias_delete_removes_the_container(watcher, served_model, docker_client):
    model, v3 = served_model.name, served_model.good[2]
    mt.set_alias(model, "dockercanary", v3)
    wait_for(lambda: watcher.endpoint_ready("dockercanary", v3), DEPLOY_TIMEOUT)
    mt.delete_alias(model, "dockercanary")
    wait_for(lambda: v3 not in _containers(docker_client, model), 30, what="container removed")
    assert watcher.invoke(model, "dockercanary")[0] == 404
