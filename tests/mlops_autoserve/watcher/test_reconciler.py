"""The reconciler around the planner, with an in-memory runtime and registry (milliseconds):
what a restarted watcher does with the route table the previous one left on disk.

The real thing (processes, MLflow) is exercised end to end in test_watcher.py; these cases
are the ones that need a registry outage or a crash at an exact moment.
"""

from __future__ import annotations

import time

import pytest
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.routetable import (
    Replica,
    RouteEntry,
    TablePublisher,
    read,
    table_path,
)
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.desired import Desired
from mlops_autoserve.watcher.reconciler import Reconciler
from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Endpoint,
    Health,
)

from tests.harness import wait_for

M = "iris"


class FakeRuntime:
    """Deployments in a dict; health as the test sets it; records every start and stop."""

    manages_replicas = False

    def want(self, counts, floors) -> None:
        raise AssertionError("only a runtime that keeps its replicas is handed counts")

    def __init__(self) -> None:
        self.running: dict[str, Deployment] = {}
        self.health_of: dict[str, Health] = {}
        self.started: list[tuple[DeploymentKey, int]] = []
        self.stopped: list[str] = []

    def add(self, ident: str, version: int, health: Health = Health.READY, replica: int = 0, model: str = M) -> Deployment:
        deployment = Deployment(DeploymentKey(model, version), f"http://127.0.0.1:{18000 + len(self.running)}", ident,
                                time.time(), replica)
        self.running[ident], self.health_of[ident] = deployment, health
        return deployment

    def list(self) -> list[Deployment]:
        return list(self.running.values())

    def start(self, key, aliases=(), replica=0, env=None) -> Deployment:
        self.started.append((key, replica))
        return self.add(f"new-{key.version}-{replica}", key.version, Health.STARTING, replica, key.model)

    def health(self, deployment) -> Health:
        return self.health_of.get(deployment.ident, Health.DEAD)

    def stop(self, deployment) -> None:
        self.stopped.append(deployment.ident)
        self.running.pop(deployment.ident, None)


class FakeReader:
    def __init__(self, desired: Desired | None) -> None:
        self.desired = desired
        self.client = None

    def read_state(self) -> Desired:
        if self.desired is None:
            raise ConnectionError("tracking server unreachable")
        return self.desired


def _reconciler(tmp_path, runtime, reader, **settings) -> Reconciler:
    config = AutoserveSettings(tracking_uri="http://127.0.0.1:9", state_dir=tmp_path, smoke_test=False,
                               drain_seconds=0.0, **settings)
    return Reconciler(config, runtime, AutoserveMetrics(), reader=reader)


def _publish(tmp_path, *entries: RouteEntry) -> None:
    TablePublisher(table_path(tmp_path)).publish(entries)


def test_registry_down_at_start_serves_the_last_published_routes(tmp_path):
    runtime = FakeRuntime()
    runtime.add("a", 1)
    _publish(tmp_path, RouteEntry(M, "Production", 1, 1, "ready", 5.0, None, (Replica("http://x", "a"),)))
    reconciler = _reconciler(tmp_path, runtime, FakeReader(None))
    reconciler.reconcile_once()
    table = read(table_path(tmp_path))
    route = table.get(M, "Production")
    assert (route.version, route.state, [r.ident for r in route.replicas]) == (1, "ready", ["a"])
    assert route.since == 5.0  # carried over, not a new switch
    assert runtime.stopped == [] and runtime.started == []
    assert reconciler.last_cycle_error == "registry unreachable"


def test_restart_in_the_middle_of_a_move_keeps_the_old_version_routed(tmp_path):
    runtime = FakeRuntime()
    runtime.add("old", 1)
    runtime.add("new", 2, Health.STARTING)
    _publish(tmp_path, RouteEntry(M, "Production", 2, 1, "switching", 5.0, None, (Replica("http://x", "old"),)))
    reconciler = _reconciler(tmp_path, runtime, FakeReader(Desired({(M, "Production"): 2})))
    reconciler.reconcile_once()
    route = read(table_path(tmp_path)).get(M, "Production")
    assert (route.version, route.state) == (1, "switching")  # blue/green, not recreate
    assert runtime.stopped == [] and runtime.started == []  # the new one is already starting
    runtime.health_of["new"] = Health.READY
    reconciler.reconcile_once()
    route = read(table_path(tmp_path)).get(M, "Production")
    assert (route.version, route.state, [r.ident for r in route.replicas]) == (2, "ready", ["new"])
    reconciler.reconcile_once()  # drain_seconds=0: the old one is retired (stopped on the pool)
    for stopping in list(reconciler.route_controller.stopping.values()):
        stopping.result(5)
    assert runtime.stopped == ["old"]


def test_a_table_serial_only_grows_and_unchanged_routes_are_not_rewritten(tmp_path):
    runtime = FakeRuntime()
    runtime.add("a", 1)
    reconciler = _reconciler(tmp_path, runtime, FakeReader(Desired({(M, "Production"): 1})))
    reconciler.reconcile_once()
    first = read(table_path(tmp_path))
    reconciler.reconcile_once()
    assert read(table_path(tmp_path)) == first
    again = _reconciler(tmp_path, runtime, FakeReader(Desired({(M, "Production"): 1, (M, "challenger"): 1})))
    again.reconcile_once()
    assert read(table_path(tmp_path)).serial == first.serial + 1


def test_watcher_health_is_stale_when_cycles_keep_failing_not_only_when_they_stop(tmp_path):
    """A loop that runs but cannot read the registry is not healthy: /health says why (503)."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer
    from mlops_autoserve.watcher.control import ControlApi

    metrics = AutoserveMetrics()
    reconciler = _reconciler(tmp_path, FakeRuntime(), FakeReader(None))
    reconciler.metrics = metrics
    api = ControlApi(reconciler.settings, reconciler, metrics)

    async def health() -> tuple[int, dict]:
        async with TestClient(TestServer(api.app())) as client:
            response = await client.get("/health")
            return response.status, await response.json()

    reconciler.reconcile_once()  # the registry is down: the cycle ran, and failed
    status, body = asyncio.run(health())
    assert status == 200 and body["problems"] == []  # a short outage is not yet a problem
    reconciler.failing_since -= 120  # two minutes of failing cycles
    status, body = asyncio.run(health())
    assert status == 503 and body["status"] == "stale"
    assert body["problems"] == ["cycles failing for 120 s: registry unreachable"]


@pytest.mark.parametrize("seen_by", ["cycle", "registry read"])
def test_an_aborted_rollout_gives_the_traffic_back_in_the_next_cycle_not_the_next_poll(tmp_path, make_model,
                                                                                      tracking_uri, seen_by):
    """The real registry, a poll interval of an hour: the watcher still reads a running
    rollout's own tag every cycle, so `mlops rollout abort` takes effect within a cycle. When
    a registry read sees the abort first, it is counted all the same, once."""
    import mlops_toolkit as mt
    from mlops_toolkit import rollout as rollouts

    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "challenger", 2)
    rollouts.start_rollout(model, "challenger", steps=(50, 100), step_seconds=600)
    runtime = FakeRuntime()
    runtime.add("v1", 1, model=model)
    runtime.add("v2", 2, model=model)
    config = AutoserveSettings(tracking_uri=tracking_uri, state_dir=tmp_path, smoke_test=False, drain_seconds=0.0,
                               poll_interval=3600, models=frozenset({model}))
    reconciler = Reconciler(config, runtime, AutoserveMetrics())
    reconciler.reconcile_once()
    canary = read(table_path(tmp_path)).get(model, "Production").canary
    assert (canary.version, canary.percent, [r.ident for r in canary.replicas]) == (2, 50, ["v2"])

    rollouts.abort_rollout(model)
    if seen_by == "registry read":
        reconciler.source.due = True  # as a webhook or the poll would
    reconciler.reconcile_once()
    assert read(table_path(tmp_path)).get(model, "Production").canary is None
    reconciler.reconcile_once()
    assert reconciler.metrics.rollout_total.labels(model, "aborted")._value.get() == 1
    assert reconciler.metrics.rollout_percent.labels(model, "Production", "2")._value.get() == 0
    assert mt.get_alias(model, "Production").version == 1


def test_prod_keeps_an_alias_on_what_it_served_until_the_wanted_version_is_approved(tmp_path, make_model,
                                                                                    tracking_uri, monkeypatch):
    """The real registry; MLOPS_ENVIRONMENT=prod on the watcher: an unapproved wanted version
    is not started, the route stays on the approved one and says blocked and why; an alias
    that served nothing answers 503 with the reason; approving lets the move happen."""
    import mlops_toolkit as mt
    from mlops_toolkit import approvals

    model = make_model(versions=3)
    approvals.approve(model, 1)
    mt.set_alias(model, "Production", 1)
    runtime = FakeRuntime()
    runtime.add("v1", 1, model=model)
    config = AutoserveSettings(tracking_uri=tracking_uri, state_dir=tmp_path, smoke_test=False, drain_seconds=0.0,
                               poll_interval=3600, models=frozenset({model}), environment="prod")
    reconciler = Reconciler(config, runtime, AutoserveMetrics())
    reconciler.reconcile_once()
    assert read(table_path(tmp_path)).get(model, "Production").state == "ready"

    mt.set_alias(model, "Production", 2)
    mt.set_alias(model, "staging", 3)
    reconciler.source.due = True
    reconciler.reconcile_once()
    table = read(table_path(tmp_path))
    production, staging = table.get(model, "Production"), table.get(model, "staging")
    assert (production.version, production.desired_version, production.state) == (1, 2, "blocked")
    assert production.last_error == f"v2 is not approved for prod (mlops approve {model} --version 2)"
    assert [r.ident for r in production.replicas] == ["v1"]  # still serving
    assert (staging.version, staging.state, staging.replicas) == (None, "blocked", ())
    assert runtime.started == []  # neither unapproved version was started
    blocked = reconciler.metrics.route_blocked
    assert blocked.labels(model, "Production", "2")._value.get() == 1

    approvals.approve(model, 2)
    reconciler.source.due = True
    reconciler.reconcile_once()
    wait_for(lambda: runtime.started, 5, what="the deploy started on the work queue")
    assert [key.version for key, _ in runtime.started] == [2]  # the move goes ahead (blue/green)
    assert read(table_path(tmp_path)).get(model, "Production").state == "switching"


class ReplicatingRuntime(FakeRuntime):
    """A runtime that keeps each version's copies itself, like Swarm: one deployment per
    version, its running copies as endpoints, the counts handed over by ``want``."""

    manages_replicas = True

    def __init__(self) -> None:
        super().__init__()
        self.wanted: list[dict[DeploymentKey, int]] = []

    def want(self, counts, floors) -> None:
        self.wanted.append(dict(counts))

    def start(self, key, aliases=(), replica=0, env=None) -> Deployment:
        """Ready at once with three running copies."""
        started = super().start(key, aliases, replica, env)
        self.running[started.ident] = Deployment(key, started.url, started.ident, started.started_at, endpoints=tuple(
            Endpoint(f"http://127.0.0.1:{19000 + i}", f"task-{i}", i) for i in range(3)))
        self.health_of[started.ident] = Health.READY
        return self.running[started.ident]


def test_a_runtime_that_keeps_the_replicas_gets_the_counts_and_one_deployment_per_version(tmp_path):
    runtime = ReplicatingRuntime()
    desired = Desired({(M, "Production"): 1}, replicas={M: 3})
    reconciler = _reconciler(tmp_path, runtime, FakeReader(desired))
    reconciler.reconcile_once()
    for pending in list(reconciler.route_controller.pending.values()):
        pending.result(5)
    assert runtime.started == [(DeploymentKey(M, 1), 0)]  # one deployment, not three
    assert runtime.wanted[-1] == {DeploymentKey(M, 1): 3}
    reconciler.reconcile_once()
    route = read(table_path(tmp_path)).get(M, "Production")
    assert route.state == "ready" and [(r.url, r.ident) for r in route.replicas] == [
        (f"http://127.0.0.1:{19000 + i}", f"task-{i}") for i in range(3)]  # the gateway balances over the copies
    assert runtime.started == [(DeploymentKey(M, 1), 0)] and runtime.stopped == []


def test_a_restart_in_the_middle_of_a_move_matches_the_tables_copies_to_their_deployment(tmp_path):
    """The route table lists a Swarm service's tasks; a restarted watcher finds the service
    behind them and keeps the old version routed while the new one starts (blue/green)."""
    runtime = ReplicatingRuntime()
    old = runtime.add("service-1", 1)
    runtime.running["service-1"] = Deployment(old.key, old.url, old.ident, old.started_at, endpoints=(
        Endpoint("http://127.0.0.1:19001", "task-a", 0), Endpoint("http://127.0.0.1:19002", "task-b", 1)))
    runtime.add("service-2", 2, Health.STARTING)
    _publish(tmp_path, RouteEntry(M, "Production", 2, 1, "switching", 5.0, None,
                                  (Replica("http://127.0.0.1:19001", "task-a"), Replica("http://127.0.0.1:19002", "task-b", 1))))
    reconciler = _reconciler(tmp_path, runtime, FakeReader(Desired({(M, "Production"): 2})))
    reconciler.reconcile_once()
    route = read(table_path(tmp_path)).get(M, "Production")
    assert (route.version, route.state, route.since) == (1, "switching", 5.0)
    assert [r.ident for r in route.replicas] == ["task-a", "task-b"]
    assert runtime.started == [] and runtime.stopped == []


def test_prod_blocking_the_serving_version_takes_it_out_back_to_the_last_good_one(tmp_path, make_model,
                                                                                 tracking_uri):
    """The kill switch kills: blocking the version an alias serves moves the route, blue/green,
    to the newest approved, unblocked version in that alias's history; with none, nothing
    serves (the gateway answers 503 with the reason). The real registry; an in-memory runtime."""
    import mlops_toolkit as mt
    from mlops_toolkit import approvals

    model = make_model(versions=2)
    for version in (1, 2):
        approvals.approve(model, version)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "Production", 2)  # the history now says v1 served before
    runtime = FakeRuntime()
    runtime.add("v2", 2, model=model)
    config = AutoserveSettings(tracking_uri=tracking_uri, state_dir=tmp_path, smoke_test=False, drain_seconds=0.0,
                               poll_interval=3600, models=frozenset({model}), environment="prod")
    reconciler = Reconciler(config, runtime, AutoserveMetrics())
    reconciler.reconcile_once()
    assert read(table_path(tmp_path)).get(model, "Production").version == 2

    approvals.block(model, 2, reason="leaked split")
    reconciler.source.due = True
    reconciler.reconcile_once()
    wait_for(lambda: runtime.started, 5, what="the last good version started")
    assert [key.version for key, _ in runtime.started] == [1]
    route = read(table_path(tmp_path)).get(model, "Production")
    assert (route.version, route.state) == (2, "blocked")  # blue/green: v2 answers until v1 is ready
    runtime.health_of["new-1-0"] = Health.READY
    for pending in list(reconciler.route_controller.pending.values()):
        pending.result(10)
    reconciler.reconcile_once()
    route = read(table_path(tmp_path)).get(model, "Production")
    assert (route.version, route.desired_version, route.state) == (1, 2, "blocked")
    assert route.last_error == f"v2 is blocked in prod (mlops unblock {model} --version 2)"
    reconciler.reconcile_once()  # v2 is out of every route: retired
    wait_for(lambda: "v2" in runtime.stopped, 5, what="the blocked version stopped")
    assert reconciler.metrics.route_blocked.labels(model, "Production", "2")._value.get() == 1

    approvals.block(model, 1, reason="also leaked")  # nothing left that may serve
    reconciler.source.due = True
    reconciler.reconcile_once()
    route = read(table_path(tmp_path)).get(model, "Production")
    assert (route.version, route.state, route.replicas) == (None, "blocked", ())
    assert "no approved, unblocked version in its history" in route.last_error
