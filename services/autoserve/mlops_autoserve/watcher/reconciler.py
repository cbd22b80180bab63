"""The control loop: make what runs match what the registry says, one level-triggered step at a time.

Every cycle reads observed state from the runtime (never from memory) and, every
``poll_interval`` or when woken by a webhook, desired state from the registry. The
decisions are a pure function (:mod:`planner`); this module gathers its inputs and carries
out its plan:

* an alias whose version has its replicas ready is routed to them at once (a route flip);
* missing replicas of a wanted version are started beside what serves (blue/green); the
  route moves once ``min_ready`` of them passed /ping and their smoke test;
* a deployment no route needs any more is drained (the gateway's in-flight count, or
  time), then stopped;
* a failed deploy leaves the old route alone and is retried with exponential back-off;
* a registry outage keeps the last known desired state: nothing that serves is touched.

Routes are published as a versioned route table file (:mod:`routetable`) that the
gateway, a process of its own, serves from. At start the last published table seeds both
the previous routes (so a restart in the middle of a move stays blue/green) and, while
the registry cannot be read, the desired state.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import MappingProxyType

from mlops_autoserve.watcher import planner
from mlops_autoserve.watcher.autoscale import Scaler
from mlops_autoserve.watcher.deployer import Deployer
from mlops_autoserve.watcher.desired import Desired, RegistryReader, RouteKey
from mlops_autoserve.watcher.environments import Build, Environments
from mlops_autoserve.watcher.health import HealthTracker, Verdict
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.watcher.planner import Failure, Route, RouteState
from mlops_autoserve.routetable import (
    CanaryTarget,
    EnvBuild,
    Replica,
    RouteEntry,
    RouteTable,
    ScaleView,
    ShadowTarget,
    TablePublisher,
    table_path,
)
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey, Health, Runtime
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.targets import TargetsFile
from mlops_toolkit import audit, http
from mlops_toolkit.aliases import set_alias
from mlops_toolkit.errors import one_line
from mlops_toolkit.governance import Decision, PolicyRefusal, environment
from mlops_toolkit.registry import alias_map
from mlops_toolkit.rollout import (
    ABORTED,
    FAILED,
    MIN_REQUESTS,
    PASSED,
    RUNNING,
    Rollout,
    StepFigures,
    judge,
    rollout_of,
)
from mlops_toolkit.rollout import save as save_rollout
from mlops_toolkit.tags import MODEL_VERSION_TAG_MAX, fit

log = logging.getLogger("autoserve.reconciler")

ERROR_TAG = "mlops.autoserve.error"
ROLLOUT_RESULT_TAG = "mlops.rollout.result"  # on the candidate version: why its rollout failed
REGISTRY_BACKOFF_MAX = 10.0  # seconds between registry reads while it is down: a failed read costs one request
DRAIN_LIMIT = 30.0  # seconds past drain_seconds after which in-flight requests are not waited for

__all__ = ["ERROR_TAG", "Reconciler", "Route"]


class Reconciler:
    def __init__(
        self,
        settings: AutoserveSettings,
        runtime: Runtime,
        metrics: AutoserveMetrics,
        reader: RegistryReader | None = None,
        environments: Environments | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.metrics = metrics
        self.reader = reader or RegistryReader(settings, metrics)
        self.routes: MappingProxyType[RouteKey, Route] = MappingProxyType({})
        self.publisher = TablePublisher(table_path(settings.state_dir))
        self._seed: RouteTable | None = self.publisher.last  # what the previous watcher published
        self.failing_since: float | None = None  # unix time cycles started failing
        self.last_cycle_error: str | None = None
        self.stopping = threading.Event()
        self.environments = environments
        self._deployer = Deployer(settings, runtime, self.stopping, environments)
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="deploy")
        self._wake = threading.Event()
        self._registry_due = True
        self._desired: Desired | None = None
        self._registry_failures = 0
        self._next_registry_read = 0.0
        self._pending: dict[tuple[DeploymentKey, int], Future] = {}
        self._pending_aliases: dict[tuple[DeploymentKey, int], str] = {}  # metric label of each deploy
        self._stopping: dict[str, Future] = {}  # by ident
        self._failures: dict[DeploymentKey, Failure] = {}
        self._unrouted_since: dict[str, float] = {}
        self._moved_seen: dict[RouteKey, tuple[int, float]] = {}
        self._driving: dict[RouteKey, Rollout] = {}  # running rollouts as of the last cycle
        self._held_logged: set[RouteKey] = set()  # held routes already logged (once per hold)
        self._health = HealthTracker(settings.ping_failures, settings.liveness_window, settings.ready_timeout)
        self._probed: dict[str, tuple[Verdict, float]] = {}  # ident -> (verdict, monotonic)
        self._thread: threading.Thread | None = None
        self._targets = TargetsFile(settings.targets_file) if settings.targets_file else None
        self._scaler = Scaler(settings, metrics)
        self.cycles = 0

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def wake(self, read_registry: bool = True) -> None:
        """Reconcile now (a webhook arrived, a deploy finished)."""
        if read_registry:
            self._registry_due = True
        self._wake.set()

    def shutdown(self) -> None:
        """Stop the loop; stop every deployment unless told to leave them for adoption."""
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._executor.shutdown(wait=True, cancel_futures=True)
        if not self.settings.leave_running:
            self.publisher.publish(())  # the gateway answers 404, not 502, from now on
            for deployment in self.runtime.list():
                log.info("stopping on shutdown", extra=_fields(deployment))
                self.runtime.stop(deployment)
            if self._targets is not None:
                self._targets.write(())
        self.routes = MappingProxyType({})

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.reconcile_once()
            until_registry = self._next_registry_read - time.monotonic()
            self._wake.wait(timeout=max(0.05, min(until_registry, self.settings.health_interval)))
            self._wake.clear()

    # -- one cycle -----------------------------------------------------------------------
    def reconcile_once(self) -> None:
        started = time.perf_counter()
        result = "ok"
        try:
            self._collect_finished_work()
            if not self._refresh_desired():
                result = "registry_error"
                if self._desired is None and self._seed is not None:
                    # Registry down at start: keep serving what the last watcher published.
                    self._desired = Desired({(r.model, r.alias): r.desired_version for r in self._seed.routes})
                    log.warning("registry unreachable at start; serving the last published routes",
                                extra={"routes": len(self._desired.routes), "table_serial": self._seed.serial})
            if self._desired is not None:
                self._converge(self._desired)
        except Exception as exc:  # one bad cycle must never kill the loop
            result = "error"
            self.last_cycle_error = one_line(exc)
            log.exception("reconcile failed")
        finally:
            if result == "ok":
                self.failing_since, self.last_cycle_error = None, None
            elif self.failing_since is None:
                self.failing_since = time.time()
            if result == "registry_error":
                self.last_cycle_error = "registry unreachable"
            self.cycles += 1
            self.metrics.reconcile_total.labels(result).inc()
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
            self.metrics.last_reconcile.set(time.time())

    def _refresh_desired(self) -> bool:
        now = time.monotonic()
        if not (self._registry_due or now >= self._next_registry_read):
            return True
        self._registry_due = False
        try:
            desired = self.reader.read_state()
        except Exception as exc:
            self._registry_failures += 1
            # One request per failed read: back off, but not so far that recovery waits minutes.
            cap = max(self.settings.poll_interval, REGISTRY_BACKOFF_MAX)
            delay = min(self.settings.poll_interval * 2 ** (self._registry_failures - 1), cap)
            self._next_registry_read = now + delay
            log.warning(
                "registry unreachable; serving continues unchanged",
                extra={"error": one_line(exc), "retry_in_s": round(delay, 1)},
            )
            return False
        if self._registry_failures:
            log.info("registry reachable again", extra={"failed_reads": self._registry_failures})
        self._registry_failures = 0
        self._next_registry_read = now + self.settings.poll_interval
        self._desired = desired
        return True

    def _converge(self, desired: Desired) -> None:
        observed = self._observe()
        previous = self.routes
        if not previous and self._seed is not None:
            previous = self._routes_from_table(self._seed, observed)
        self._seed = None
        held = self._held(desired, previous)
        now, wall = time.monotonic(), time.time()
        floors, scaled = self._scaler.step(desired, observed, now, wall)
        default_replicas = self.settings.replicas
        if getattr(self.runtime, "manages_replicas", False):
            # One deployment per version (a Swarm service): the runtime keeps its copies.
            self.runtime.want({DeploymentKey(m, v): scaled.get(DeploymentKey(m, v), floors.get(m, default_replicas))
                               for (m, _), v in held.planned.items()}, floors)
            floors, scaled, default_replicas = {}, {}, 1
        result = planner.plan(planner.Inputs(
            desired=held.planned, observed=observed, previous=previous, now=now, wall=wall,
            replicas=floors, scaled=scaled, default_replicas=default_replicas, min_ready=self.settings.min_ready,
            pending=frozenset(self._pending), stopping=frozenset(self._stopping), failures=self._failures,
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
        self._drive_rollouts(desired)  # first: an ended rollout's traffic goes back in this very table
        canaries = self._canaries(desired, observed)
        published = {key: held.shown(key, route) for key, route in result.routes.items()}
        published.update({key: route for key, route in held.unserved.items() if key not in published})
        building = self.environments.building() if self.environments is not None else {}
        self.publisher.publish(tuple(
            _entry(r, _shadow_target(key, desired, result.routes, canaries.get(key)), canaries.get(key),
                   _build_view(building.get((r.model, r.desired_version))), self._scaler.view(r.model, r.version))
            for key, r in published.items()))
        self._unrouted_since = result.unrouted_since
        for key, replica, aliases in result.deploy:
            self._submit_deploy(key, replica, aliases)
        for deployment in result.retire:
            self._retire(deployment)
        self._publish_endpoint_metrics(published)
        self._publish_held(held)
        if self.environments is not None:
            self.environments.maybe_prune({d.env for d, _ in observed if d.env})
        if self._targets is not None:
            self._targets.write(result.routes.values())

    def _held(self, desired: Desired, previous: dict[RouteKey, Route]) -> Held:
        """Prod's rule applied to the plan: a route whose wanted version may not serve keeps
        the version it serves (or serves nothing); the published state says blocked, and why."""
        planned = dict(desired.routes)
        unserved = {}
        for key, reason in desired.held.items():
            before = previous.get(key)
            if before is not None and before.version is not None:
                planned[key] = before.version
            else:
                del planned[key]
                unserved[key] = Route(key[0], key[1], desired.routes[key], (), RouteState.BLOCKED, time.time(), reason)
            if key not in self._held_logged:
                log.warning("route held: the wanted version may not serve here",
                            extra={"model": key[0], "alias": key[1], "version": desired.routes[key], "reason": reason})
        self._held_logged = set(desired.held)
        return Held(planned, {k: (desired.routes[k], r) for k, r in desired.held.items()}, unserved)

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
    def _routes_from_table(table: RouteTable, observed: list[tuple[Deployment, bool]]) -> dict[RouteKey, Route]:
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

    def _observe(self) -> list[tuple[Deployment, bool]]:
        """Observed state from the runtime: every live deployment and whether it is ready.
        Dead ones (and ones past their liveness limits) are stopped here and restarted by the plan."""
        now = time.monotonic()
        observed = []
        deployments = self.runtime.list()
        alive = {d.ident for d in deployments}
        self._health.forget(alive)
        for ident in list(self._probed):
            if ident not in alive:
                del self._probed[ident]
        for deployment in deployments:
            if (deployment.key, deployment.replica) in self._pending or deployment.ident in self._stopping:
                observed.append((deployment, False))
                continue
            verdict, reason = self._verdict(deployment, now)
            if verdict is Verdict.RESTART:
                log.warning(f"{reason}; it will be restarted", extra=_fields(deployment))
                self.runtime.stop(deployment)
                self._note_failure(deployment.key, reason, first_retry_now=True)
                continue
            observed.append((deployment, verdict is Verdict.READY))
        return observed

    def _verdict(self, deployment: Deployment, now: float) -> tuple[Verdict, str]:
        """Probe at most once per health interval while a deployment stays ready."""
        cached = self._probed.get(deployment.ident)
        if cached is not None and cached[0] is Verdict.READY and now - cached[1] < self.settings.health_interval:
            return cached[0], ""
        try:
            probe = self.runtime.health(deployment)
        except Exception as exc:  # noqa: BLE001 - could not check: unknown, never dead
            log.warning("health check failed", extra={**_fields(deployment), "error": one_line(exc)})
            probe = Health.UNKNOWN
        verdict, reason = self._health.update(deployment.ident, probe, now, time.time() - deployment.started_at)
        self._probed[deployment.ident] = (verdict, now)
        return verdict, reason

    def _retire(self, deployment: Deployment) -> None:
        """Stop a deployment out of every route, once the gateway has no request in flight to it."""
        since = self._unrouted_since.get(deployment.ident, time.monotonic())
        waited = time.monotonic() - since
        if waited < self.settings.drain_seconds + DRAIN_LIMIT and self._gateway_inflight(deployment) > 0:
            return
        self._unrouted_since.pop(deployment.ident, None)
        log.info("stopping unrouted deployment", extra=_fields(deployment))
        self._stopping[deployment.ident] = self._executor.submit(self.runtime.stop, deployment)

    def _gateway_inflight(self, deployment: Deployment) -> int:
        """Requests the gateway still has in flight to ``deployment`` (0 when it cannot tell:
        the drain grace period, and DRAIN_LIMIT on top at most, bound the wait anyway)."""
        url = self.settings.gateway_admin_url
        if not url:
            return 0
        inflight = http.get_json(f"{url.rstrip('/')}/inflight", timeout=1)
        try:
            return sum(int(inflight.get(e.url, 0)) for e in deployment.serving()) if isinstance(inflight, dict) else 0
        except (TypeError, ValueError):
            return 0

    # -- rollouts ------------------------------------------------------------------------
    def _canaries(self, desired: Desired, observed: list[tuple[Deployment, bool]]) -> dict[RouteKey, CanaryTarget]:
        """Each running rollout's candidate: its share and its ready replicas."""
        canaries = {}
        for (model, alias), rollout in desired.rollouts.items():
            key = DeploymentKey(model, rollout.candidate)
            replicas = _replicas(d for d, ready in observed if ready and d.key == key)
            canaries[(model, alias)] = CanaryTarget(rollout.candidate, rollout.percent, replicas)
            self.metrics.rollout_percent.labels(model, alias, str(rollout.candidate)).set(
                rollout.percent if replicas else 0)
        return canaries

    def _drive_rollouts(self, desired: Desired) -> None:
        """Judge each running rollout's step on the gateway's figures; move on, promote or fail."""
        for key in [k for k in self._driving if k not in desired.rollouts]:
            self._ended_elsewhere(self._driving.pop(key))  # seen ended by a registry read, not by a cycle
        for key, rollout in list(desired.rollouts.items()):
            self._driving[key] = rollout
            for result in (PASSED, FAILED, ABORTED):  # series at 0 first, so an alert sees the step to 1
                self.metrics.rollout_total.labels(rollout.model, result)
            try:
                ended = self._drive(desired, rollout)
            except Exception as exc:  # noqa: BLE001 - a registry hiccup: judged again next cycle
                log.warning("rollout step not recorded", extra={"model": key[0], "alias": key[1], "error": one_line(exc)})
                continue
            if ended is not None:
                del desired.rollouts[key]
                del self._driving[key]
                self._count_ended(ended)
                self._registry_due = True

    def _count_ended(self, ended: Rollout) -> None:
        self.metrics.rollout_total.labels(ended.model, ended.state).inc()
        self.metrics.rollout_percent.labels(ended.model, ended.alias, str(ended.candidate)).set(0)

    def _ended_elsewhere(self, rollout: Rollout) -> None:
        """A rollout this watcher drove is gone from the registry's running ones (an abort
        read by a registry poll before a cycle saw it): count how it ended, once."""
        try:
            fresh = rollout_of(self.reader.client.get_registered_model(rollout.model), rollout.alias)
        except Exception:  # noqa: BLE001 - the registry is away: the tag said it is not running
            fresh = None
        same = fresh is not None and fresh.candidate == rollout.candidate and fresh.state != RUNNING
        ended = fresh if same else replace(rollout, state=ABORTED, reason="ended outside this watcher")
        log.warning(f"rollout ended: {ended}", extra={"model": rollout.model, "alias": rollout.alias})
        self._count_ended(ended)

    def _drive(self, desired: Desired, rollout: Rollout) -> Rollout | None:
        model, alias = rollout.model, rollout.alias
        client = self.reader.client
        # One read of this model per cycle while its rollout runs: an abort (or a hand move)
        # takes effect within a cycle, not at the next full registry poll.
        registered = client.get_registered_model(model)
        fresh = rollout_of(registered, alias)
        if fresh is None or fresh.state != RUNNING or fresh.candidate != rollout.candidate:
            ended = fresh if fresh is not None and fresh.state != RUNNING else replace(
                rollout, state=ABORTED, reason="the rollout's tag was removed or replaced")
            log.warning(f"rollout ended: {ended}", extra={"model": model, "alias": alias})
            return ended
        rollout = fresh
        desired.rollouts[(model, alias)] = rollout
        now_serving = alias_map(registered).get(alias)
        if now_serving != rollout.baseline:
            state = PASSED if now_serving == rollout.candidate else ABORTED
            ended = replace(rollout, state=state, reason=rollout.reason if state == PASSED else
                            f"{model}@{alias} was moved to v{now_serving} by hand during the rollout")
            save_rollout(client, ended)
            log.warning(f"rollout ended: {ended}", extra={"model": model, "alias": alias})
            return ended
        figures = self._figures(rollout)
        if figures is None:
            return None
        verdict, reason = judge(rollout, figures, time.time())
        if verdict == "wait":
            return None
        if verdict == "next":
            moved = replace(rollout, step=rollout.step + 1, step_started=time.time(), reason=reason)
            save_rollout(client, moved)
            desired.rollouts[(model, alias)] = moved
            log.info(f"rollout: {reason}", extra={"model": model, "alias": alias, "version": rollout.candidate})
            audit.record("rollout.step", "passed", model=model, alias=alias, to_version=rollout.candidate, reason=reason)
            return None
        if verdict == "promote":
            try:  # on behalf of whoever started it (the policy allowed that); the version is checked again
                set_alias(model, alias, rollout.candidate, reason=f"rollout: {reason}",
                          authorized=Decision(rollout.started_by or "autoserve", (), "alias.set", environment()))
                ended = replace(rollout, state=PASSED, reason=reason)
            except PolicyRefusal as exc:  # blocked (or approval withdrawn) during the rollout
                verdict, reason = "fail", f"the gate passed but the alias move was refused: {exc}"
        if verdict == "fail":
            ended = replace(rollout, state=FAILED, reason=reason)
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            client.set_model_version_tag(model, str(rollout.candidate), ROLLOUT_RESULT_TAG,
                                         fit(f"{stamp} {reason}", MODEL_VERSION_TAG_MAX))
        save_rollout(client, ended)
        audit.record("rollout.end", ended.state, model=model, alias=alias, from_version=rollout.baseline,
                     to_version=rollout.candidate, reason=ended.reason)
        log.info(f"rollout ended: {ended}", extra={"model": model, "alias": alias, "version": rollout.candidate,
                                                   "result": ended.state})
        return ended

    def _figures(self, rollout: Rollout) -> StepFigures | None:
        url = self.settings.gateway_admin_url
        if not url:
            return None
        query = urllib.parse.urlencode({"model": rollout.model, "alias": rollout.alias,
                                        "version": str(rollout.candidate), "since": rollout.step_started})
        data = http.get_json(f"{url.rstrip('/')}/stats?{query}", timeout=2)
        if not isinstance(data, dict):
            return None
        try:
            figures = StepFigures(int(data.get("requests", 0)), int(data.get("errors", 0)), data.get("p95_ms"),
                                  int(data.get("labels_compared", 0)), int(data.get("labels_agreed", 0)),
                                  int(data.get("numbers_compared", 0)), float(data.get("abs_diff_sum", 0.0)))
        except (TypeError, ValueError):  # a gateway of another release: judged again next cycle
            return None
        self._publish_gate(rollout, figures)
        return figures

    def _publish_gate(self, rollout: Rollout, figures: StepFigures) -> None:
        """The step's figures as gauges (kept after the rollout ends: why it ended stays visible)."""
        if figures.requests < MIN_REQUESTS:
            return
        labels = (rollout.model, rollout.alias, str(rollout.candidate))
        self.metrics.rollout_step_error_ratio.labels(*labels).set(figures.errors / figures.requests)
        if figures.p95_ms is not None:
            self.metrics.rollout_step_p95.labels(*labels).set(figures.p95_ms / 1000)
        if figures.labels_compared >= MIN_REQUESTS:
            self.metrics.rollout_step_agreement.labels(*labels).set(figures.labels_agreed / figures.labels_compared)

    # -- deploy work ---------------------------------------------------------------------
    def _submit_deploy(self, key: DeploymentKey, replica: int, aliases: tuple[str, ...]) -> None:
        log.info("deploying", extra={**_fields(key), "replica": replica, "aliases": list(aliases)})
        future = self._executor.submit(self._deployer.deploy, key, aliases, replica)
        future.add_done_callback(lambda _: self.wake(read_registry=False))
        self._pending[(key, replica)] = future
        self._pending_aliases[(key, replica)] = ",".join(aliases)

    def _collect_finished_work(self) -> None:
        for ident, future in list(self._stopping.items()):
            if future.done():
                del self._stopping[ident]
                if future.exception() is not None:
                    log.error("stop failed", extra={"ident": ident, "error": one_line(future.exception())})
        for (key, replica), future in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[(key, replica)]
            aliases = self._pending_aliases.pop((key, replica), "")
            error = future.exception() if not future.cancelled() else RuntimeError("cancelled")
            if error is None:
                self.metrics.deploy_total.labels(key.model, aliases, "success").inc()
                log.info("deployment ready", extra={**_fields(key), "replica": replica, "aliases": aliases})
                audit.record("autoserve.deploy", model=key.model, version=key.version, replica=replica, aliases=aliases)
                cleared = self._failures.pop(key, None)
                if cleared is not None and cleared.tagged:
                    self._tag_version(key, None)
            else:
                self.metrics.deploy_total.labels(key.model, aliases, "failed").inc()
                failure = self._note_failure(key, one_line(error, 500))
                log.error(
                    "deploy failed; the previous version keeps serving",
                    extra={**_fields(key), "replica": replica, "aliases": aliases, "error": failure.error,
                           "attempt": failure.attempts, "retry_in_s": round(failure.retry_at - time.monotonic(), 1)},
                )
                if failure.attempts == 1:  # the first failure of a version, not every retry
                    audit.record("autoserve.deploy", "failed", model=key.model, version=key.version, replica=replica,
                                 reason=failure.error)
                if not failure.tagged:
                    self._failures[key] = Failure(failure.error, failure.attempts, failure.retry_at,
                                                  tagged=self._tag_version(key, failure.error))

    def _note_failure(self, key: DeploymentKey, error: str, first_retry_now: bool = False) -> Failure:
        """Exponential back-off per version: never a crash loop."""
        previous = self._failures.get(key)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.settings.backoff_initial * 2 ** (attempts - 1), self.settings.backoff_max)
        if first_retry_now and attempts == 1:
            delay = 0.0
        failure = Failure(error, attempts, time.monotonic() + delay, tagged=bool(previous and previous.tagged))
        self._failures[key] = failure
        return failure

    def _tag_version(self, key: DeploymentKey, error: str | None) -> bool:
        """Make the failure visible on the model version itself (cleared on success)."""
        try:
            client = self.reader.client
            if error is None:
                client.delete_model_version_tag(key.model, str(key.version), ERROR_TAG)
            else:
                stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                client.set_model_version_tag(key.model, str(key.version), ERROR_TAG,
                                             fit(f"{stamp} {error}", MODEL_VERSION_TAG_MAX))
            return True
        except Exception as exc:  # the registry may be down: the failure is in logs and metrics anyway
            log.warning("could not tag model version", extra={**_fields(key), "error": one_line(exc)})
            return False

    def _publish_endpoint_metrics(self, routes: dict[RouteKey, Route]) -> None:
        gauge = self.metrics.endpoint_info
        gauge.clear()
        for route in routes.values():
            version = route.version if route.version is not None else route.desired_version
            gauge.labels(route.model, route.alias, str(version), str(route.state)).set(1)


@dataclass(frozen=True)
class Held:
    """Routes prod holds back: what the planner routes instead, and what is published."""

    planned: dict[RouteKey, int]  # desired routes with held ones on the version that serves
    wanted: dict[RouteKey, tuple[int, str]]  # held route -> (the version wanted, why it may not serve)
    unserved: dict[RouteKey, Route]  # held routes with nothing serving: published as blocked, no replicas

    def shown(self, key: RouteKey, route: Route) -> Route:
        if key not in self.wanted:
            return route
        version, reason = self.wanted[key]
        return replace(route, desired_version=version, state=RouteState.BLOCKED, last_error=reason)


def _replicas(deployments: Iterable[Deployment]) -> tuple[Replica, ...]:
    """What the gateway balances over: every running copy of each deployment."""
    return tuple(Replica(e.url, e.ident, e.index) for d in deployments for e in d.serving())


def _entry(route: Route, shadow: ShadowTarget | None = None, canary: CanaryTarget | None = None,
           building: EnvBuild | None = None, scale: ScaleView | None = None) -> RouteEntry:
    return RouteEntry(route.model, route.alias, route.desired_version, route.version, str(route.state), route.since,
                      route.last_error, _replicas(route.deployments), shadow, canary, building, scale)


def _build_view(build: Build | None) -> EnvBuild | None:
    return None if build is None else EnvBuild(build.version, build.env, build.since, build.progress)


def _shadow_target(key: RouteKey, desired: Desired, routes: dict[RouteKey, Route],
                   canary: CanaryTarget | None = None) -> ShadowTarget | None:
    """Where the gateway copies ``key``'s requests: the shadow alias's ready replicas, if any.

    During a rollout whose gate compares answers, the shadow is the candidate: the requests
    the baseline answers are copied to it (at the percent and comparison of a shadow the
    user set on the candidate's alias, else all of them, compared by output type).
    """
    shadow = desired.shadows.get(key)
    rollout = desired.rollouts.get(key)
    if rollout is not None and rollout.compares and canary is not None and canary.replicas:
        own = shadow is not None and shadow.alias == rollout.to
        return ShadowTarget(rollout.to, rollout.candidate, shadow.percent if own else 100.0,
                            shadow.compare if own else "auto", canary.replicas)
    target = routes.get((key[0], shadow.alias)) if shadow else None
    if shadow is None or target is None or not target.deployments:
        return None
    return ShadowTarget(shadow.alias, target.version, shadow.percent, shadow.compare, _replicas(target.deployments))


def _fields(item: DeploymentKey | Deployment) -> dict:
    key = item.key if isinstance(item, Deployment) else item
    fields = {"model": key.model, "version": key.version}
    if isinstance(item, Deployment):
        fields["replica"] = item.replica
    return fields
