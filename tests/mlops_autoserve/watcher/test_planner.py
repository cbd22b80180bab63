"""The control loop's decisions, with plain values: no server, no process, milliseconds.

The end-to-end behaviour on real processes is in test_watcher.py; here every rule of the
planner is pinned down, including the ones that are slow or racy to reach for real
(a restart in the middle of a move, back-off, scale down, a broken version).
"""

from __future__ import annotations

import itertools

from mlops_autoserve.watcher.planner import Failure, Inputs, Route, plan
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey

_ids = itertools.count(1)
M = "iris"


def dep(version: int, replica: int = 0, model: str = M) -> Deployment:
    n = next(_ids)
    return Deployment(DeploymentKey(model, version), f"http://127.0.0.1:{18000 + n}", str(n), 0.0, replica)


def inputs(desired, observed, previous=None, **kw) -> Inputs:
    return Inputs(desired=desired, observed=observed, previous=previous or {}, now=kw.pop("now", 100.0),
                  wall=kw.pop("wall", 1_000.0), **kw)


def routed(result, alias="Production"):
    route = result.routes[(M, alias)]
    return route.state, route.version, {d.ident for d in route.deployments}


def test_first_alias_deploys_every_replica_and_routes_nothing_yet():
    result = plan(inputs({(M, "Production"): 1}, [], default_replicas=2))
    assert result.deploy == [(DeploymentKey(M, 1), 0, ("Production",)), (DeploymentKey(M, 1), 1, ("Production",))]
    assert routed(result) == ("starting", None, set())


def test_route_moves_only_when_all_replicas_are_ready_by_default():
    a, b = dep(1, 0), dep(1, 1)
    half = plan(inputs({(M, "Production"): 1}, [(a, True), (b, False)], default_replicas=2))
    assert routed(half) == ("starting", None, set()) and half.deploy == []
    full = plan(inputs({(M, "Production"): 1}, [(a, True), (b, True)], default_replicas=2))
    assert routed(full) == ("ready", 1, {a.ident, b.ident})
    assert full.switched == [((M, "Production"), None, 1)]


def test_min_ready_moves_the_route_earlier():
    a, b = dep(1, 0), dep(1, 1)
    result = plan(inputs({(M, "Production"): 1}, [(a, True), (b, False)], default_replicas=2, min_ready=1))
    assert routed(result) == ("ready", 1, {a.ident})


def test_blue_green_keeps_the_old_version_until_the_new_one_is_ready():
    old = [dep(1, 0), dep(1, 1)]
    previous = {(M, "Production"): Route(M, "Production", 1, tuple(old), "ready", 5.0)}
    new = dep(2, 0)
    observed = [(d, True) for d in old] + [(new, False)]
    result = plan(inputs({(M, "Production"): 2}, observed, previous, default_replicas=2))
    assert routed(result) == ("switching", 1, {d.ident for d in old})
    assert result.routes[(M, "Production")].since == 5.0  # the old version's start is kept
    assert result.deploy == [(DeploymentKey(M, 2), 1, ("Production",))]  # only the missing replica
    assert result.retire == []


def test_recreate_drops_the_old_route_at_once_and_stops_it():
    old = dep(1)
    previous = {(M, "Production"): Route(M, "Production", 1, (old,), "ready", 5.0)}
    result = plan(inputs({(M, "Production"): 2}, [(old, True)], previous, strategy="recreate"))
    assert routed(result) == ("starting", None, set())
    assert result.retire == [old]


def test_a_routed_version_that_loses_a_replica_keeps_serving_degraded():
    a, b = dep(1, 0), dep(1, 1)
    previous = {(M, "Production"): Route(M, "Production", 1, (a, b), "ready", 5.0)}
    result = plan(inputs({(M, "Production"): 1}, [(a, True)], previous, default_replicas=2))
    assert routed(result) == ("degraded", 1, {a.ident})
    assert result.deploy == [(DeploymentKey(M, 1), 1, ("Production",))]  # the lost one comes back


def test_restart_in_the_middle_of_a_move_stays_blue_green():
    """A restarted watcher has no memory: the previous route comes from the last route table,
    matched to what runs; the half-started new version must not take the route, nor the old
    one be stopped."""
    old, new = dep(1), dep(2)
    from_table = {(M, "Production"): Route(M, "Production", 1, (old,), "switching", 5.0)}
    result = plan(inputs({(M, "Production"): 2}, [(old, True), (new, False)], from_table))
    assert routed(result) == ("switching", 1, {old.ident})
    assert result.retire == [] and result.deploy == []


def test_a_failed_version_backs_off_and_the_old_one_serves():
    old = dep(1)
    previous = {(M, "Production"): Route(M, "Production", 1, (old,), "ready", 5.0)}
    failures = {DeploymentKey(M, 9): Failure("smoke test got HTTP 500", 2, retry_at=130.0)}
    waiting = plan(inputs({(M, "Production"): 9}, [(old, True)], previous, failures=failures, now=120.0))
    route = waiting.routes[(M, "Production")]
    assert (route.state, route.version, route.last_error) == ("failed", 1, "smoke test got HTTP 500")
    assert waiting.deploy == [] and waiting.retire == []
    retry = plan(inputs({(M, "Production"): 9}, [(old, True)], previous, failures=failures, now=131.0))
    assert retry.deploy == [(DeploymentKey(M, 9), 0, ("Production",))]


def test_deleted_alias_drains_then_retires():
    gone = dep(3)
    first = plan(inputs({}, [(gone, True)], now=100.0, drain_seconds=2.0))
    assert first.routes == {} and first.retire == [] and first.unrouted_since == {gone.ident: 100.0}
    later = plan(inputs({}, [(gone, True)], now=102.5, unrouted_since=first.unrouted_since, drain_seconds=2.0))
    assert later.retire == [gone]


def test_two_aliases_on_one_version_share_its_replicas():
    a = dep(2)
    result = plan(inputs({(M, "Production"): 2, (M, "challenger"): 2}, [(a, True)]))
    assert routed(result, "Production") == routed(result, "challenger") == ("ready", 2, {a.ident})
    assert result.deploy == []


def test_scale_down_retires_replicas_beyond_the_wanted_count():
    a, b, c = dep(1, 0), dep(1, 1), dep(1, 2)
    previous = {(M, "Production"): Route(M, "Production", 1, (a, b, c), "ready", 5.0)}
    result = plan(inputs({(M, "Production"): 1}, [(a, True), (b, True), (c, True)], previous,
                         replicas={M: 2}, drain_seconds=0.0))
    assert routed(result) == ("ready", 1, {a.ident, b.ident})
    assert result.retire == [c]


def test_a_model_tag_overrides_the_default_replica_count():
    result = plan(inputs({(M, "Production"): 1, ("other", "Production"): 1}, [], default_replicas=1, replicas={M: 3}))
    counts = {key.model: sum(1 for k, _, _ in result.deploy if k == key) for key, _, _ in result.deploy}
    assert counts == {M: 3, "other": 1}


def test_nothing_being_started_or_stopped_is_retired_or_routed():
    starting = dep(1)
    result = plan(inputs({}, [(starting, True)], pending=frozenset({(starting.key, 0)}), drain_seconds=0.0))
    assert result.retire == []
    routed_plan = plan(inputs({(M, "Production"): 1}, [(starting, True)], pending=frozenset({(starting.key, 0)})))
    assert routed(routed_plan) == ("starting", None, set())
