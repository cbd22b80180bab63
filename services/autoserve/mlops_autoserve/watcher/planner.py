"""The control loop's decisions as a pure function: (desired, observed, memory) -> plan.

No I/O and no clock of its own: the reconciler gathers the inputs (registry, runtime,
health, remembered failures), calls :func:`plan`, then carries the plan out. That keeps
every rule here (blue/green, recreate, replicas, back-off, draining) testable in
milliseconds with plain values.

Rules:

* a route moves to a version once ``min_ready`` of its replicas answer (all of them by
  default); until then the previous version keeps the route (blue/green), or nothing
  does (recreate);
* a routed version keeps its route while at least one replica answers ("degraded" below
  ``min_ready``), so one lost replica never empties a route;
* the previous route is whatever serves now, as observed: after a watcher restart it comes
  from the runtime and the last published route table, never from memory alone;
* a version whose deploy failed is retried only after its back-off; what serves stays;
* a deployment no route needs (or a replica beyond the wanted count) is stopped after
  ``drain_seconds`` out of every route.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey

RouteKey = tuple[str, str]  # (model, alias)


class RouteState(enum.StrEnum):
    """Where a route stands; the value is what /endpoints, metrics and alerts show."""

    READY = "ready"  # the wanted version serves, with at least min_ready replicas
    DEGRADED = "degraded"  # the wanted version serves, with fewer replicas than min_ready
    STARTING = "starting"  # nothing serves yet: the wanted version is being started
    SWITCHING = "switching"  # the previous version serves while the wanted one starts
    RESTARTING = "restarting"  # the wanted version served and lost every replica
    FAILED = "failed"  # the wanted version could not start; what served before still does
    BLOCKED = "blocked"  # prod: the wanted version is not approved or is blocked; what served before still does


@dataclass(frozen=True)
class Route:
    """What the gateway and /endpoints see for one (model, alias)."""

    model: str
    alias: str
    desired_version: int
    deployments: tuple[Deployment, ...]  # ready replicas traffic goes to now (empty: nothing ready)
    state: RouteState
    since: float  # unix time the serving version took the route
    last_error: str | None = None

    @property
    def deployment(self) -> Deployment | None:
        return self.deployments[0] if self.deployments else None

    @property
    def version(self) -> int | None:
        return self.deployments[0].key.version if self.deployments else None


@dataclass(frozen=True)
class Failure:
    error: str
    attempts: int
    retry_at: float  # monotonic
    tagged: bool = False  # written to the model version's error tag


@dataclass(frozen=True)
class Inputs:
    desired: Mapping[RouteKey, int]
    observed: Iterable[tuple[Deployment, bool]]  # every live deployment, and whether it is ready
    previous: Mapping[RouteKey, Route]
    now: float  # monotonic
    wall: float  # unix time
    replicas: Mapping[str, int] = field(default_factory=dict)  # per model; others get default_replicas
    default_replicas: int = 1
    # Versions the autoscaler gave another count (the model's count above is their floor):
    # extra replicas start beside the ready ones and leave after draining; the route's
    # readiness still counts against the floor, so a scale-up never degrades it.
    scaled: Mapping[DeploymentKey, int] = field(default_factory=dict)
    min_ready: int | None = None  # replicas that must answer before a route moves (None: all)
    pending: frozenset[tuple[DeploymentKey, int]] = frozenset()  # (version, replica) being deployed
    stopping: frozenset[str] = frozenset()  # idents being stopped
    failures: Mapping[DeploymentKey, Failure] = field(default_factory=dict)
    unrouted_since: Mapping[str, float] = field(default_factory=dict)  # ident -> monotonic
    strategy: str = "blue-green"
    drain_seconds: float = 2.0


@dataclass
class Plan:
    routes: dict[RouteKey, Route]
    deploy: list[tuple[DeploymentKey, int, tuple[str, ...]]]  # (version, replica, aliases)
    retire: list[Deployment]  # out of every route for drain_seconds: stop them
    unrouted_since: dict[str, float]
    switched: list[tuple[RouteKey, int | None, int]]  # (route, from version, to version)


def base_replicas(inputs: Inputs, model: str) -> int:
    return max(1, int(inputs.replicas.get(model, inputs.default_replicas)))


def wanted_replicas(inputs: Inputs, key: DeploymentKey) -> int:
    return max(1, int(inputs.scaled.get(key, base_replicas(inputs, key.model))))


def needed_ready(inputs: Inputs, model: str) -> int:
    base = base_replicas(inputs, model)
    return base if inputs.min_ready is None else max(1, min(inputs.min_ready, base))


def plan(inputs: Inputs) -> Plan:
    live: dict[DeploymentKey, list[Deployment]] = {}
    ready: dict[DeploymentKey, list[Deployment]] = {}
    idle: list[Deployment] = []  # not being started or stopped: may be retired
    for deployment, is_ready in inputs.observed:
        live.setdefault(deployment.key, []).append(deployment)
        busy = (deployment.key, deployment.replica) in inputs.pending or deployment.ident in inputs.stopping
        if is_ready and not busy:
            ready.setdefault(deployment.key, []).append(deployment)
        if not busy:
            idle.append(deployment)
    for replicas in (*live.values(), *ready.values()):
        replicas.sort(key=lambda d: d.replica)

    routes: dict[RouteKey, Route] = {}
    switched: list[tuple[RouteKey, int | None, int]] = []
    for route_key, version in sorted(inputs.desired.items()):
        model, alias = route_key
        key = DeploymentKey(model, version)
        current = inputs.previous.get(route_key)
        failure = inputs.failures.get(key)
        wanted = wanted_replicas(inputs, key)
        up = tuple(d for d in ready.get(key, ()) if d.replica < wanted) or tuple(ready.get(key, ()))
        routed_here = current is not None and current.version == version
        if up and (len(up) >= needed_ready(inputs, model) or routed_here):
            state = RouteState.READY if len(up) >= needed_ready(inputs, model) else RouteState.DEGRADED
            since = current.since if routed_here else inputs.wall
            if not routed_here:
                switched.append((route_key, current.version if current else None, version))
            routes[route_key] = Route(model, alias, version, up, state, since, None if state is RouteState.READY else
                                      (failure.error if failure else None))
            continue
        keep: tuple[Deployment, ...] = ()
        if current is not None and current.version is not None and not routed_here:
            keep = tuple(ready.get(current.deployments[0].key, ()))
            if inputs.strategy == "recreate":
                keep = ()
        routes[route_key] = Route(
            model, alias, version, keep, _state(key, keep, current, failure, inputs),
            since=current.since if current is not None and keep and current.version == keep[0].key.version else inputs.wall,
            last_error=failure.error if failure else None,
        )

    deploy = _deploys(inputs, live)
    retire, unrouted_since = _retire(inputs, routes, idle)
    return Plan(routes, deploy, retire, unrouted_since, switched)


def _state(key: DeploymentKey, keep: tuple, current: Route | None, failure: Failure | None,
           inputs: Inputs) -> RouteState:
    if failure is not None and not any(k == key for k, _ in inputs.pending):
        return RouteState.FAILED
    if keep:
        return RouteState.SWITCHING
    if current is not None and current.version == key.version:
        return RouteState.RESTARTING
    return RouteState.STARTING


def _deploys(inputs: Inputs, live: Mapping[DeploymentKey, list[Deployment]]) -> list[tuple[DeploymentKey, int, tuple[str, ...]]]:
    """Every missing replica of every wanted version, unless that version is backing off."""
    aliases: dict[DeploymentKey, list[str]] = {}
    for (model, alias), version in inputs.desired.items():
        aliases.setdefault(DeploymentKey(model, version), []).append(alias)
    deploy = []
    for key in sorted(aliases):
        failure = inputs.failures.get(key)
        if failure is not None and inputs.now < failure.retry_at:
            continue
        running = {d.replica for d in live.get(key, ())}
        for replica in range(wanted_replicas(inputs, key)):
            if replica not in running and (key, replica) not in inputs.pending:
                deploy.append((key, replica, tuple(sorted(aliases[key]))))
    return deploy


def _retire(inputs: Inputs, routes: Mapping[RouteKey, Route], idle: list[Deployment]) -> tuple[list[Deployment], dict[str, float]]:
    routed = {d.ident for route in routes.values() for d in route.deployments}
    wanted_versions = {DeploymentKey(m, v) for (m, _), v in inputs.desired.items()}
    grace = 0.0 if inputs.strategy == "recreate" else inputs.drain_seconds
    retire, unrouted_since = [], {}
    for deployment in idle:
        needed = deployment.ident in routed or (
            deployment.key in wanted_versions and deployment.replica < wanted_replicas(inputs, deployment.key)
        )
        if needed:
            continue
        since = inputs.unrouted_since.get(deployment.ident, inputs.now)
        unrouted_since[deployment.ident] = since
        if inputs.now - since >= grace:
            retire.append(deployment)
    return retire, unrouted_since

