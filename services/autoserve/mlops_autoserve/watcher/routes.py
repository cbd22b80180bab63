"""The route controller: make what runs, and the route table the gateway serves from, match
one cycle's snapshot.

The decisions are the planner's (:func:`planner.plan`, a pure function); this module
gathers its inputs and carries out its plan:

* an alias whose version has its replicas ready is routed to them at once (a route flip);
* missing replicas of a wanted version are queued (per model, :mod:`workqueue`) and
  started beside what serves (blue/green); the route moves once ``min_ready`` of them
  passed /ping and their smoke test;
* a deployment no route needs any more is drained (the gateway's in-flight count, or
  time), then stopped on the queue's stop lane, which never waits behind deploys;
* a failed deploy leaves the old route alone and is retried with exponential back-off;
* prod (:class:`Held`): a route whose wanted version may not serve keeps serving what it
  serves if that version may serve, else goes back (blue/green) to the newest approved,
  unblocked version in the alias's history, else serves nothing and the gateway answers
  503 with the reason.

At start the last published table seeds the previous routes, so a restart in the middle of
a move stays blue/green.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import MappingProxyType

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.routetable import (
    CanaryTarget,
    EnvBuild,
    Replica,
    RouteEntry,
    RouteTable,
    ScaleView,
    ShadowTarget,
    TablePublisher,
)
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher import planner
from mlops_autoserve.watcher.autoscale import Scaler
from mlops_autoserve.watcher.deployer import Deployer
from mlops_autoserve.watcher.desired import Desired, RouteKey
from mlops_autoserve.watcher.environments import Build, Environments
from mlops_autoserve.watcher.gateways import GatewayFleet
from mlops_autoserve.watcher.observe import Observed, Snapshot, fields
from mlops_autoserve.watcher.planner import Failure, Route, RouteState
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey, Runtime
from mlops_toolkit import audit
from mlops_toolkit.errors import one_line
from mlops_toolkit.rollout import Rollout
from mlops_toolkit.tags import MODEL_VERSION_TAG_MAX, fit

log = logging.getLogger("autoserve.reconciler")

ERROR_TAG = "mlops.autoserve.error"
DRAIN_LIMIT = 30.0  # seconds past drain_seconds after which in-flight requests are not waited for


@dataclass(frozen=True)
class Held:
    """Routes prod holds back: what the planner routes instead, and what is published."""

    planned: dict[RouteKey, int]  # desired routes, held ones on the version that may serve instead
    wanted: dict[RouteKey, tuple[int, str]]  # held route -> (the version wanted, why it may not serve)
    unserved: dict[RouteKey, Route]  # held routes with nothing that may serve: published blocked, no replicas

    def shown(self, key: RouteKey, route: Route) -> Route:
        if key not in self.wanted:
            return route
        version, reason = self.wanted[key]
        return replace(route, desired_version=version, state=RouteState.BLOCKED, last_error=reason)


def hold(desired: Desired, previous: Mapping[RouteKey, Route], wall: float) -> Held:
    """Prod's rule applied to the plan (pure): for each held route, the version that serves
    instead: the one serving now if it may serve, else the newest one in the alias's history
    that may, else none (the route is published blocked with no replicas)."""
    planned = dict(desired.routes)
    unserved: dict[RouteKey, Route] = {}
    for key, held in desired.held.items():
        before = previous.get(key)
        serving = before.version if before is not None else None
        if serving is not None and (key[0], serving) in desired.servable:
            planned[key] = serving
        elif held.fallbacks:
            planned[key] = held.fallbacks[0]
        else:
            del planned[key]
            reason = f"{held.reason}; no approved, unblocked version in its history to serve instead"
            unserved[key] = Route(key[0], key[1], desired.routes[key], (), RouteState.BLOCKED, wall, reason)
    wanted = {k: (desired.routes[k], h.reason) for k, h in desired.held.items()}
    return Held(planned, wanted, unserved)


class RouteController:
    name = "routes"

    def __init__(self, settings: AutoserveSettings, runtime: Runtime, metrics: AutoserveMetrics, queue,
                 deployer: Deployer, publisher: TablePublisher, scaler: Scaler,
                 environments: Environments | None, client: Callable[[], object]) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.queue = queue  # WorkQueue: submit_deploy(model, fn, *args) / submit_stop(fn, *args)
        self.deployer = deployer
        self.publisher = publisher
        self.scaler = scaler
        self.environments = environments
        self._client = client
        self.gateways = GatewayFleet(settings)
        self.routes: MappingProxyType[RouteKey, Route] = MappingProxyType({})
        self.seed: RouteTable | None = publisher.last  # what the previous watcher published
        self.pending: dict[tuple[DeploymentKey, int], Future] = {}
        self._pending_aliases: dict[tuple[DeploymentKey, int], str] = {}  # metric label of each deploy
        self.stopping: dict[str, Future] = {}  # by ident
        self.failures: dict[DeploymentKey, Failure] = {}
        self._unrouted_since: dict[str, float] = {}
        self._moved_seen: dict[RouteKey, tuple[int, float]] = {}
        self._held_logged: dict[RouteKey, tuple[int, int | None]] = {}  # held route -> (wanted, served) logged
        self.on_done: Callable[[], None] = lambda: None  # a deploy finished: reconcile again

    # -- observed state helpers ----------------------------------------------------------
    def busy(self, deployment: Deployment) -> bool:
        return (deployment.key, deployment.replica) in self.pending or deployment.ident in self.stopping

    def restarted(self, deployment: Deployment, reason: str) -> None:
        self.note_failure(deployment.key, reason, first_retry_now=True)

    # -- one cycle -----------------------------------------------------------------------
    def reconcile(self, snap: Snapshot) -> dict[RouteKey, Route]:
        desired, observed, rollouts = snap.desired, snap.observed, snap.rollouts
        previous = self.routes
        if not previous and self.seed is not None:
            previous = self.routes_from_table(self.seed, observed)
        self.seed = None
        held = hold(desired, previous, snap.wall)
        self._log_held(desired, held, previous)
        floors, scaled = self.scaler.step(desired, observed, snap.now, snap.wall)
        default_replicas = self.settings.replicas
        if self.runtime.manages_replicas:
            # One deployment per version (a Swarm service): the runtime keeps its copies.
            self.runtime.want({DeploymentKey(m, v): scaled.get(DeploymentKey(m, v), floors.get(m, default_replicas))
                               for (m, _), v in held.planned.items()}, floors)
            floors, scaled, default_replicas = {}, {}, 1
        result = planner.plan(planner.Inputs(
            desired=held.planned, observed=observed, previous=previous, now=snap.now, wall=snap.wall,
            replicas=floors, scaled=scaled, default_replicas=default_replicas, min_ready=self.settings.min_ready,
            pending=frozenset(self.pending), stopping=frozenset(self.stopping), failures=self.failures,
            unrouted_since=self._unrouted_since, strategy=self.settings.strategy,
            drain_seconds=self.settings.drain_seconds,
        ))
        for route_key, before, after in result.switched:
            self._log_switch(route_key, before, after)
        for route_key, route in result.routes.items():
            current = previous.get(route_key)
            if current is not None and current.version is not None and current.version != route.desired_version:
                self._moved_seen.setdefault(route_key, (route.desired_version, time.monotonic()))
        self.routes = MappingProxyType(result.routes)
        canaries = {key: CanaryTarget(r.candidate, r.percent, _replicas(snap.ready(DeploymentKey(key[0], r.candidate))))
                    for key, r in rollouts.items()}
        for (model, alias), canary in canaries.items():  # the candidate's share: 0 until it has a ready replica
            self.metrics.rollout_percent.labels(model, alias, str(canary.version)).set(
                canary.percent if canary.replicas else 0)
        published = {key: held.shown(key, route) for key, route in result.routes.items()}
        published.update({key: route for key, route in held.unserved.items() if key not in published})
        building = self.environments.building() if self.environments is not None else {}
        self.publisher.publish(tuple(
            _entry(r, _shadow_target(key, desired, rollouts, result.routes, canaries.get(key)), canaries.get(key),
                   _build_view(building.get((r.model, r.desired_version))), self.scaler.view(r.model, r.version),
                   tuple(str(e) for e in desired.errors_of(*key)))
            for key, r in published.items()))
        self._unrouted_since = result.unrouted_since
        for key, replica, aliases in result.deploy:
            self._submit_deploy(key, replica, aliases)
        for deployment in result.retire:
            self._retire(deployment)
        self._publish_endpoint_metrics(published)
        self._publish_held(held)
        return published

    def _log_held(self, desired: Desired, held: Held, previous: Mapping[RouteKey, Route]) -> None:
        """One log line (and audit event) per held route and what serves it, not one per cycle."""
        logged = {}
        for key, (version, reason) in held.wanted.items():
            served = held.planned.get(key)
            logged[key] = (version, served)
            if self._held_logged.get(key) == (version, served):
                continue
            before = previous.get(key)
            was = before.version if before is not None else None
            log.warning("route held: the wanted version may not serve here",
                        extra={"model": key[0], "alias": key[1], "version": version, "reason": reason,
                               "serving_instead": served})
            if was is not None and was != served and (key[0], was) not in desired.servable:
                audit.record("autoserve.withdraw", model=key[0], alias=key[1], from_version=was, to_version=served,
                             reason=reason)
        self._held_logged = logged

    def _publish_held(self, held: Held) -> None:
        gauge = self.metrics.route_blocked
        gauge.clear()
        for (model, alias), (version, _) in held.wanted.items():
            gauge.labels(model, alias, str(version)).set(1)

    def _log_switch(self, route_key: RouteKey, before: int | None, after: int) -> None:
        model, alias = route_key
        seen = self._moved_seen.pop(route_key, None)
        if before is not None and before != after:
            if seen is not None:
                self.metrics.switch_duration.observe(time.monotonic() - seen[1])
            log.info("route switched", extra={"model": model, "alias": alias, "from_version": before, "version": after})
            audit.record("autoserve.switch", model=model, alias=alias, from_version=before, to_version=after)
        else:
            log.info("route ready", extra={"model": model, "alias": alias, "version": after})

    @staticmethod
    def routes_from_table(table: RouteTable, observed: Observed) -> dict[RouteKey, Route]:
        """Previous routes as the last watcher published them, matched to what still runs (a
        replica of the table is a deployment, or one running copy of one: a Swarm task)."""
        by_ident = {}
        for deployment, _ in observed:
            for ident in (deployment.ident, *(e.ident for e in deployment.serving())):
                by_ident[ident] = deployment
        routes = {}
        for entry in table.routes:
            deployments = tuple(dict.fromkeys(by_ident[r.ident] for r in entry.replicas if r.ident in by_ident))
            if deployments:
                routes[(entry.model, entry.alias)] = Route(entry.model, entry.alias, entry.desired_version,
                                                           deployments, RouteState(entry.state), entry.since,
                                                           entry.last_error)
        return routes

    # -- deploy and stop work ------------------------------------------------------------
    def _submit_deploy(self, key: DeploymentKey, replica: int, aliases: tuple[str, ...]) -> None:
        log.info("deploying", extra={**fields(key), "replica": replica, "aliases": list(aliases)})
        future = self.queue.submit_deploy(key.model, self.deployer.deploy, key, aliases, replica)
        future.add_done_callback(lambda _: self.on_done())
        self.pending[(key, replica)] = future
        self._pending_aliases[(key, replica)] = ",".join(aliases)

    def _retire(self, deployment: Deployment) -> None:
        """Stop a deployment out of every route, once the gateway has no request in flight to it."""
        since = self._unrouted_since.get(deployment.ident, time.monotonic())
        waited = time.monotonic() - since
        if waited < self.settings.drain_seconds + DRAIN_LIMIT and self._gateway_inflight(deployment) > 0:
            return
        self._unrouted_since.pop(deployment.ident, None)
        log.info("stopping unrouted deployment", extra=fields(deployment))
        self.stopping[deployment.ident] = self.queue.submit_stop(self.runtime.stop, deployment)

    def _gateway_inflight(self, deployment: Deployment) -> int:
        """Requests the gateway still has in flight to ``deployment`` (0 when it cannot tell:
        the drain grace period, and DRAIN_LIMIT on top at most, bound the wait anyway)."""
        inflight = self.gateways.inflight() or {}  # over every gateway instance
        return sum(inflight.get(e.url, 0) for e in deployment.serving())

    def collect_finished(self) -> None:
        for ident, future in list(self.stopping.items()):
            if future.done():
                del self.stopping[ident]
                error = future.exception() if not future.cancelled() else None
                if error is not None:
                    log.error("stop failed", extra={"ident": ident, "error": one_line(error)})
        for (key, replica), future in list(self.pending.items()):
            if not future.done():
                continue
            del self.pending[(key, replica)]
            aliases = self._pending_aliases.pop((key, replica), "")
            error = future.exception() if not future.cancelled() else RuntimeError("cancelled")
            if error is None:
                self.metrics.deploy_total.labels(key.model, aliases, "success").inc()
                log.info("deployment ready", extra={**fields(key), "replica": replica, "aliases": aliases})
                audit.record("autoserve.deploy", model=key.model, version=key.version, replica=replica, aliases=aliases)
                cleared = self.failures.pop(key, None)
                if cleared is not None and cleared.tagged:
                    self._tag_version(key, None)
                continue
            self.metrics.deploy_total.labels(key.model, aliases, "failed").inc()
            failure = self.note_failure(key, one_line(error, 500))
            log.error("deploy failed; the previous version keeps serving",
                      extra={**fields(key), "replica": replica, "aliases": aliases, "error": failure.error,
                             "attempt": failure.attempts, "retry_in_s": round(failure.retry_at - time.monotonic(), 1)})
            if failure.attempts == 1:  # the first failure of a version, not every retry
                audit.record("autoserve.deploy", "failed", model=key.model, version=key.version, replica=replica,
                             reason=failure.error)
            if not failure.tagged:
                self.failures[key] = replace(failure, tagged=self._tag_version(key, failure.error))

    def note_failure(self, key: DeploymentKey, error: str, first_retry_now: bool = False) -> Failure:
        """Exponential back-off per version: never a crash loop.

        Replicas of one version that fail together (a shared environment build failing
        them all at once) are one attempt, not one each: the back-off counts the version's
        attempts, so 32 replicas failing at once do not send it straight to backoff_max."""
        previous = self.failures.get(key)
        if previous is not None and time.monotonic() < previous.retry_at and not first_retry_now:
            return previous  # this attempt already failed and is backing off
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.settings.backoff_initial * 2 ** (attempts - 1), self.settings.backoff_max)
        if first_retry_now and attempts == 1:
            delay = 0.0
        failure = Failure(error, attempts, time.monotonic() + delay, tagged=bool(previous and previous.tagged))
        self.failures[key] = failure
        return failure

    def _tag_version(self, key: DeploymentKey, error: str | None) -> bool:
        """Make the failure visible on the model version itself (cleared on success)."""
        try:
            client = self._client()
            if error is None:
                client.delete_model_version_tag(key.model, str(key.version), ERROR_TAG)
            else:
                stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                client.set_model_version_tag(key.model, str(key.version), ERROR_TAG,
                                             fit(f"{stamp} {error}", MODEL_VERSION_TAG_MAX))
            return True
        except Exception as exc:  # noqa: BLE001 - the registry may be down: the failure is in logs and metrics anyway
            log.warning("could not tag model version", extra={**fields(key), "error": one_line(exc)})
            return False

    def _publish_endpoint_metrics(self, routes: Mapping[RouteKey, Route]) -> None:
        gauge = self.metrics.endpoint_info
        gauge.clear()
        for route in routes.values():
            version = route.version if route.version is not None else route.desired_version
            gauge.labels(route.model, route.alias, str(version), str(route.state)).set(1)


def _replicas(deployments: Iterable[Deployment]) -> tuple[Replica, ...]:
    """What the gateway balances over: every running copy of each deployment."""
    return tuple(Replica(e.url, e.ident, e.index) for d in deployments for e in d.serving())


def _entry(route: Route, shadow: ShadowTarget | None = None, canary: CanaryTarget | None = None,
           building: EnvBuild | None = None, scale: ScaleView | None = None,
           problems: tuple[str, ...] = ()) -> RouteEntry:
    return RouteEntry(route.model, route.alias, route.desired_version, route.version, str(route.state), route.since,
                      route.last_error, _replicas(route.deployments), shadow, canary, building, scale, problems)


def _build_view(build: Build | None) -> EnvBuild | None:
    return None if build is None else EnvBuild(build.version, build.env, build.since, build.progress)


def _shadow_target(key: RouteKey, desired: Desired, rollouts: Mapping[RouteKey, Rollout],
                   routes: Mapping[RouteKey, Route], canary: CanaryTarget | None = None) -> ShadowTarget | None:
    """Where the gateway copies ``key``'s requests: the shadow alias's ready replicas, if any.

    During a rollout whose gate compares answers, the shadow is the candidate: the requests
    the baseline answers are copied to it (at the percent and comparison of a shadow the
    user set on the candidate's alias, else all of them, compared by output type).
    """
    shadow = desired.shadows.get(key)
    rollout = rollouts.get(key)
    if rollout is not None and rollout.compares and canary is not None and canary.replicas:
        own = shadow is not None and shadow.alias == rollout.to
        return ShadowTarget(rollout.to, rollout.candidate, shadow.percent if own else 100.0,
                            shadow.compare if own else "auto", canary.replicas)
    target = routes.get((key[0], shadow.alias)) if shadow else None
    if shadow is None or target is None or not target.deployments:
        return None
    return ShadowTarget(shadow.alias, target.version, shadow.percent, shadow.compare, _replicas(target.deployments))
