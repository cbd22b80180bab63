"""The Swarm runtime on a real single-node swarm (127.0.0.1) of the real Docker engine
(tests/swarm.py: swarm mode for the module, the machine left as it was; an MLflow server on
the swarm's overlay network). The gateway runs on the host and reaches each task through the
port Swarm publishes for it on the node.

One watcher serves the module (2 replicas, autoscaling up to 3 at 30 req/s per replica):
its tests run in order, each leaving Production on a serving version.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

import mlops_toolkit as mt
from mlops_toolkit.ops.processes import free_port
from tests.harness import LoadClient, wait_for
from tests.mlops_toolkit.cli.conftest import assert_one_line_error
from tests.swarm import SwarmStack, swarm_mode

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 180
INVOCATIONS = "/serve/iris-swarm/Production/invocations"


def test_service_names_are_dns_labels_that_keep_models_apart():
    from mlops_autoserve.watcher.runtime.base import DeploymentKey
    from mlops_autoserve.watcher.runtime.swarm import service_name

    assert service_name("mlops-swarm-1a2b3c", DeploymentKey("iris", 3)).startswith("mlops-swarm-1a2b3c-iris-")
    long_a, long_b = (service_name("team-a", DeploymentKey("churn model / région " * 4 + tail, 12)) for tail in "ab")
    assert long_a != long_b and all(len(n) <= 63 and re.fullmatch(r"[A-Za-z0-9-]+", n) for n in (long_a, long_b))
    assert long_a.endswith("-v12")


def test_sizes_read_like_docker_reads_them():
    from mlops_autoserve.watcher.runtime.swarm import size_bytes

    assert [size_bytes(s) for s in ("256m", "2g", "1.5G", "512k", "1000")] == [256 << 20, 2 << 30, 3 << 29, 512 << 10, 1000]


def test_without_a_swarm_the_watcher_stops_at_once_in_one_line(docker_client, mlops_script, tracking_uri, tmp_path):
    if docker_client.info()["Swarm"]["LocalNodeState"] == "active":
        pytest.skip("the engine is in a swarm already: nothing to refuse")
    result = mlops_script("autoserve", "--runtime", "swarm", "--tracking-uri", tracking_uri, "--state-dir",
                          str(tmp_path / "state"), "--no-gateway", "--watcher-port", str(free_port()))
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "--runtime swarm needs this Docker engine to be a swarm manager; swarm: "
                                         "inactive, --runtime swarm needs `docker swarm init`")


@pytest.fixture(scope="module")
def swarm(docker_client):
    with swarm_mode(docker_client):
        yield docker_client


@pytest.fixture(scope="module")
def stack(swarm, serving_image):
    stack = SwarmStack(swarm, serving_image)
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def _swarm_registry(request, monkeypatch) -> None:
    """Tests of this module talk to the swarm's MLflow, not the session's server."""
    if "stack" in request.fixturenames:
        uri = request.getfixturevalue("stack").uri
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mt.configure(tracking_uri=uri, experiment="swarm")


@pytest.fixture(scope="module")
def versions(stack, iris_data) -> list[int]:
    """Two sklearn versions of iris-swarm in the swarm's MLflow."""
    from sklearn.linear_model import LogisticRegression

    mt.configure(tracking_uri=stack.uri, experiment="swarm")
    X, y = iris_data
    found = []
    for c in (0.5, 1.0):
        with mt.start_run(f"C={c}") as run:
            found.append(run.log_model(LogisticRegression(C=c, max_iter=300).fit(X, y), register_as="iris-swarm",
                                       input_example=X[:3]))
    return found


@pytest.fixture(scope="module")
def served(stack, versions, tmp_path_factory):
    """Production on 2 tasks; autoscaling up to 3 above 30 req/s per replica (3 s window, 4 s cool-down)."""
    w = stack.watcher(tmp_path_factory.mktemp("swarm") / "state", ["iris-swarm"], "--aliases", "Production",
                      "--replicas", "2", "--max-replicas", "3", "--scale-target-rps", "30",
                      "--scale-target-inflight", "0", "--scale-up-window", "3", "--scale-down-cooldown", "4").start()
    mt.configure(tracking_uri=stack.uri, experiment="swarm")
    mt.set_alias("iris-swarm", "Production", versions[0])
    try:
        wait_for(lambda: w.endpoint_ready("Production", versions[0]), DEPLOY_TIMEOUT, what="Production on the swarm")
        yield w
    finally:
        w.stop()


def _service(stack: SwarmStack, version: int):
    found = stack.services(**{"mlops.model": "iris-swarm", "mlops.version": str(version)})
    assert len(found) == 1, found
    return found[0]


def test_a_version_is_one_labelled_service_whose_two_healthy_tasks_serve_through_the_gateway(stack, versions, served):
    service = _service(stack, versions[0])
    spec = service.attrs["Spec"]
    labels = spec["Labels"]
    assert labels["mlops.autoserve"] == "true" and labels["mlops.aliases"] == "Production"
    assert labels["mlops.autoserve.instance"] == stack.name and labels["mlops.version"] == str(versions[0])
    assert spec["Mode"]["Replicated"]["Replicas"] == 2
    template = spec["TaskTemplate"]
    assert "/ping" in " ".join(template["ContainerSpec"]["Healthcheck"]["Test"])
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["UpdateConfig"]["FailureAction"] == "rollback"
    assert template["RestartPolicy"]["Condition"] == "any"
    assert template["Resources"]["Limits"]["MemoryBytes"] == 1 << 30
    assert template["Resources"]["Reservations"]["MemoryBytes"] == 256 << 20
    assert spec["EndpointSpec"]["Mode"] == "dnsrr"  # no virtual IP: the gateway balances over the tasks
    tasks = stack.running_tasks(service)
    assert len(tasks) == 2
    endpoint = served.endpoints()["Production"]
    ports = {p["PublishedPort"] for t in tasks for p in t["Status"]["PortStatus"]["Ports"]}
    assert {r["url"] for r in endpoint["replicas"]} == {f"http://127.0.0.1:{p}" for p in ports}
    with LoadClient(served.port, INVOCATIONS, rate=40) as load:
        time.sleep(3)
    assert load.failed == 0 and load.versions == {str(versions[0]): sum(load.codes.values())} and load.codes["200"] > 50


def test_a_task_killed_under_load_fails_no_request_and_swarm_replaces_it(stack, versions, served):
    service = _service(stack, versions[0])
    before = {t["ID"] for t in stack.running_tasks(service)}
    victim = stack.running_tasks(service)[0]["Status"]["ContainerStatus"]["ContainerID"]
    with LoadClient(served.port, INVOCATIONS, rate=40) as load:
        time.sleep(2)
        stack.client.containers.get(victim).kill(signal="SIGKILL")
        wait_for(lambda: len(now := {t["ID"] for t in stack.running_tasks(service)}) == 2 and now != before,
                 DEPLOY_TIMEOUT, what="Swarm replaced the killed task")
        wait_for(lambda: served.endpoints()["Production"]["ready_replicas"] == 2, 30, what="the new task routed")
        time.sleep(1)
    assert load.failed == 0, load.codes
    assert _service(stack, versions[0]).id == service.id  # the same service: Swarm replaced the task


def test_a_restarted_watcher_adopts_the_service_and_recreates_nothing(stack, versions, served):
    before = {s.id: s.attrs["Version"]["Index"] for s in stack.services()}
    served.stop(signal.SIGKILL)  # the gateway, a process of its own, keeps serving
    with LoadClient(served.port, INVOCATIONS, rate=30) as load:
        time.sleep(1)
        served.start()
        wait_for(lambda: served.endpoint_ready("Production", versions[0]), 60, what="adopted")
        time.sleep(2)
    assert load.failed == 0, load.codes
    assert {s.id: s.attrs["Version"]["Index"] for s in stack.services()} == before  # not even scaled


def test_an_alias_move_under_load_starts_a_new_service_and_fails_no_request(stack, versions, served):
    with LoadClient(served.port, INVOCATIONS, rate=40) as load:
        mt.set_alias("iris-swarm", "Production", versions[1])
        wait_for(lambda: served.endpoint_ready("Production", versions[1]), DEPLOY_TIMEOUT, what="Production switched")
        wait_for(lambda: not stack.services(**{"mlops.version": str(versions[0])}), 60, what="old service removed")
        time.sleep(1)
    assert load.failed == 0, load.codes
    assert set(load.versions) == {str(versions[0]), str(versions[1])}
    assert [s.attrs["Spec"]["Labels"]["mlops.version"] for s in stack.services()] == [str(versions[1])]


def test_a_crash_looping_version_is_contained_and_the_serving_one_keeps_serving(stack, versions, served):
    from mlflow import MlflowClient

    client = MlflowClient(stack.uri, registry_uri=stack.uri)
    run = client.create_run(client.get_experiment_by_name("swarm").experiment_id)
    client.log_text(run.info.run_id, "not a model", "broken/MLmodel")  # every task exits: no flavor to load
    broken = int(client.create_model_version("iris-swarm", source=f"{run.info.artifact_uri}/broken",
                                             run_id=run.info.run_id).version)
    with LoadClient(served.port, INVOCATIONS, rate=20) as load:
        mt.set_alias("iris-swarm", "Production", broken)
        wait_for(lambda: served.endpoints()["Production"]["state"] == "failed", DEPLOY_TIMEOUT, what="failed state")
    endpoint = served.endpoints()["Production"]
    assert endpoint["version"] == versions[1]
    # the tasks' own last words, led by the exception they died of, from the service's logs
    assert re.search(r"exited before it was ready: \w+(Error|Exception): ", endpoint["last_error"]), endpoint
    assert load.failed == 0 and set(load.versions) == {str(versions[1])}
    assert "exited before it was ready" in client.get_model_version("iris-swarm", str(broken)).tags[
        "mlops.autoserve.error"]
    mt.set_alias("iris-swarm", "Production", versions[1])
    wait_for(lambda: not stack.services(**{"mlops.version": str(broken)}), 60, what="the broken service removed")


def test_autoscaling_adds_tasks_up_to_max_under_load_and_returns_to_min(stack, versions, served):
    wait_for(lambda: served.endpoint_ready("Production", versions[1]), 30, what="Production back on the good version")
    service = _service(stack, versions[1])
    with LoadClient(served.port, INVOCATIONS, rate=80) as load:
        started = time.monotonic()
        wait_for(lambda: served.endpoints()["Production"]["ready_replicas"] == 3, DEPLOY_TIMEOUT,
                 what="a third task serving")
        print(f"\nswarm: 2 -> 3 tasks serving {time.monotonic() - started:.1f} s after the load started")
        time.sleep(2)
    assert load.failed == 0, load.codes
    assert served.endpoints()["Production"]["scale"]["wanted"] == 3 and len(stack.running_tasks(service)) == 3
    wait_for(lambda: len(stack.running_tasks(service)) == 2, 60, what="back to the floor of two tasks")
    metrics = served.metrics_text()
    for direction in ("up", "down"):
        assert f'autoserve_scale_total{{direction="{direction}",model="iris-swarm",version="{versions[1]}"}} 1.0' \
            in metrics


def test_a_missing_image_is_one_error_on_the_route_and_starts_nothing(stack, versions, served, tmp_path):
    """A second watcher (another instance) on the same swarm: its failure is its own, and it
    never touches the first one's service, not even when it stops."""
    instance = f"{stack.name}-missing"
    others = [(s.id, s.attrs["Version"]["Index"]) for s in stack.services()]
    w = stack.watcher(tmp_path / "state", ["iris-swarm"], "--aliases", "staging", instance=instance,
                      image="mlops-toolkit/serving:no-such-tag").start()
    try:
        mt.set_alias("iris-swarm", "staging", versions[1])
        wait_for(lambda: (e := w.endpoints().get("staging")) and e["state"] == "failed", 60, what="failed")
        assert "mlops-toolkit/serving:no-such-tag is not on this Docker host" in w.endpoints()["staging"]["last_error"]
        assert not stack.client.services.list(filters={"label": f"mlops.autoserve.instance={instance}"})
    finally:
        w.stop()
        mt.delete_alias("iris-swarm", "staging")
    assert [(s.id, s.attrs["Version"]["Index"]) for s in stack.services()] == others


def test_on_the_overlay_network_tasks_are_reached_at_their_own_address(stack, versions, served):
    """--docker-network without --docker-publish: a gateway on that network calls each task's address."""
    from mlops_autoserve.settings import AutoserveSettings, DockerSettings
    from mlops_autoserve.watcher.runtime.swarm import SwarmRuntime

    runtime = SwarmRuntime(AutoserveSettings(stack.uri, docker=DockerSettings(
        network=stack.name, instance=stack.name)))
    [deployment] = runtime.list()
    assert len(deployment.serving()) == 2 and all(e.url.endswith(":8080") for e in deployment.serving())
    probe = "import sys, urllib.request; [urllib.request.urlopen(u + '/ping', timeout=5) for u in sys.argv[1:]]"
    stack.client.containers.run(stack.image, ["python", "-c", probe, *(e.url for e in deployment.serving())],
                                network=stack.name, remove=True)  # raises ContainerError unless every task answers


def test_doctor_reports_the_engine_as_a_swarm_manager(swarm):
    from mlops_toolkit.ops.doctor import swarm_role

    assert swarm_role(swarm.info()) == "swarm: manager of 1 node(s), 1 manager(s)"
