"""The control loop: make what runs match what the registry says, one level-triggered step at a time.

Every cycle reads observed state from the runtime (never from memory) and, every
``poll_interval`` or when woken by a webhook, desired state from the registry. Then:

* an alias whose version runs and answers is routed to it at once (a route flip);
* an alias whose version does not run gets a deployment started beside the old one
  (blue/green); the route moves only once the new one passed /ping and its smoke test;
* a deployment no route needs any more is drained, then stopped;
* a failed deploy leaves the old route alone and is retried with exponential back-off;
* a registry outage keeps the last known desired state: nothing that serves is touched.

Routes are published as a versioned route table file (:mod:`routetable`) that the
gateway, a process of its own, serves from. At start the last published table seeds both
the previous routes (so a restart in the middle of a move stays blue/green) and, while
the registry cannot be read, the desired state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import MappingProxyType

from mlops_autoserve.deployer import Deployer
from mlops_autoserve.desired import RegistryReader, RouteKey
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.routetable import Replica, RouteEntry, RouteTable, TablePublisher, table_path
from mlops_autoserve.runtime.base import Deployment, DeploymentKey, Health, Runtime
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.targets import TargetsFile
from mlops_toolkit.errors import one_line
from mlops_toolkit.tags import MODEL_VERSION_TAG_MAX, fit

log = logging.getLogger("autoserve.reconciler")

ERROR_TAG = "mlops.autoserve.error"
REGISTRY_BACKOFF_MAX = 10.0  # seconds between registry reads while it is down: a failed read costs one request


@dataclass(frozen=True)
class Route:
    """What the gateway and /endpoints see for one (model, alias)."""

    model: str
    alias: str
    desired_version: int
    deployment: Deployment | None  # where traffic goes now (None: nothing ready)
    state: str  # ready | starting | switching | failed | restarting
    since: float  # unix time the current deployment took the route
    last_error: str | None = None

    @property
    def version(self) -> int | None:
        return self.deployment.key.version if self.deployment else None


@dataclass
class _Failure:
    error: str
    attempts: int
    retry_at: float  # monotonic
    tagged: bool = False  # written to the model version's ERROR_TAG


class Reconciler:
    def __init__(
        self,
        settings: AutoserveSettings,
        runtime: Runtime,
        metrics: AutoserveMetrics,
        reader: RegistryReader | None = None,
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
        self._deployer = Deployer(settings, runtime, self.stopping)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="deploy")
        self._wake = threading.Event()
        self._registry_due = True
        self._desired: dict[RouteKey, int] | None = None
        self._registry_failures = 0
        self._next_registry_read = 0.0
        self._pending: dict[DeploymentKey, Future] = {}
        self._stopping_keys: dict[DeploymentKey, Future] = {}
        self._failures: dict[DeploymentKey, _Failure] = {}
        self._unrouted_since: dict[DeploymentKey, float] = {}
        self._moved_seen: dict[RouteKey, tuple[int, float]] = {}
        self._health_cache: dict[str, tuple[Health, float]] = {}
        self._thread: threading.Thread | None = None
        self._targets = TargetsFile(settings.targets_file) if settings.targets_file else None
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
            for deployment in self.runtime.list():
                log.info("stopping on shutdown", extra=_fields(deployment.key))
                self.runtime.stop(deployment)
            if self._targets is not None:
                self._targets.write(())
            self.publisher.publish(())
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
                    self._desired = {(r.model, r.alias): r.desired_version for r in self._seed.routes}
                    log.warning("registry unreachable at start; serving the last published routes",
                                extra={"routes": len(self._desired), "table_serial": self._seed.serial})
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
            desired = self.reader.read()
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

    def _converge(self, desired: dict[RouteKey, int]) -> None:
        now = time.monotonic()
        observed = self._observe()
        ready = {key for key, (_, health) in observed.items() if health is Health.READY}
        old_routes = self.routes
        if not old_routes and self._seed is not None:
            old_routes = self._routes_from_table(self._seed, observed)
        self._seed = None
        new_routes: dict[RouteKey, Route] = {}

        for route_key, version in sorted(desired.items()):
            model, alias = route_key
            key = DeploymentKey(model, version)
            current = old_routes.get(route_key)
            if key in ready:
                new_routes[route_key] = self._route_to(route_key, observed[key][0], current)
                continue
            # The wanted version is not serving. Blue/green keeps the old route while it still
            # answers; recreate drops it at once (the old deployment is stopped, then replaced).
            keep = current.deployment if current and current.deployment and current.deployment.key in ready else None
            if self.settings.strategy == "recreate" and keep is not None and keep.key != key:
                keep = None
            if current and current.version is not None and current.version != version:
                self._moved_seen.setdefault(route_key, (version, time.monotonic()))
            failure = self._failures.get(key)
            if key not in observed and key not in self._pending and not (failure and now < failure.retry_at):
                self._submit_deploy(key, desired)
            new_routes[route_key] = Route(
                model, alias, version, keep, self._state(key, keep, current, failure),
                since=current.since if current is not None and current.deployment == keep else time.time(),
                last_error=failure.error if failure else None,
            )

        self.routes = MappingProxyType(new_routes)
        self.publisher.publish(tuple(_entry(r) for r in new_routes.values()))
        self._retire_unrouted(new_routes, observed, desired, now)
        self._publish_endpoint_metrics(new_routes)
        if self._targets is not None:
            self._targets.write(new_routes.values())

    @staticmethod
    def _routes_from_table(table: RouteTable, observed: dict) -> MappingProxyType:
        """Previous routes as the last watcher published them, matched to what still runs."""
        by_ident = {deployment.ident: deployment for deployment, _ in observed.values()}
        routes = {}
        for entry in table.routes:
            deployment = next((by_ident[r.ident] for r in entry.replicas if r.ident in by_ident), None)
            if deployment is not None:
                routes[(entry.model, entry.alias)] = Route(entry.model, entry.alias, entry.desired_version, deployment,
                                                           entry.state, entry.since, entry.last_error)
        return MappingProxyType(routes)

    def _route_to(self, route_key: RouteKey, deployment: Deployment, current: Route | None) -> Route:
        model, alias = route_key
        if current is not None and current.deployment is not None and current.deployment.ident == deployment.ident:
            return replace(current, desired_version=deployment.key.version, deployment=deployment, state="ready", last_error=None)
        seen = self._moved_seen.pop(route_key, None)
        if current is not None and current.version is not None and current.version != deployment.key.version:
            if seen is not None:
                self.metrics.switch_duration.observe(time.monotonic() - seen[1])
            log.info(
                "route switched",
                extra={"model": model, "alias": alias, "from_version": current.version, "version": deployment.key.version},
            )
        else:
            log.info("route ready", extra={"model": model, "alias": alias, "version": deployment.key.version})
        return Route(model, alias, deployment.key.version, deployment, "ready", since=time.time())

    def _observe(self) -> dict[DeploymentKey, tuple[Deployment, Health]]:
        """Observed state from the runtime; dead deployments are cleaned up and forgotten."""
        observed = {}
        deployments = self.runtime.list()
        alive = {d.ident for d in deployments}
        for ident in list(self._health_cache):
            if ident not in alive:
                del self._health_cache[ident]
        for deployment in deployments:
            key = deployment.key
            if key in self._pending or key in self._stopping_keys:
                observed[key] = (deployment, Health.STARTING)
                continue
            health = self._health(deployment)
            stuck = health is Health.STARTING and time.time() - deployment.started_at > self.settings.ready_timeout
            if health is Health.DEAD or stuck:
                reason = "deployment died" if health is Health.DEAD else "deployment never became ready"
                log.warning(f"{reason}; it will be restarted", extra=_fields(key))
                self.runtime.stop(deployment)
                self._note_failure(key, reason, first_retry_now=True)
                continue
            observed[key] = (deployment, health)
        return observed

    def _health(self, deployment: Deployment) -> Health:
        """Ping at most once per health interval while a deployment stays READY."""
        now = time.monotonic()
        cached = self._health_cache.get(deployment.ident)
        if cached is not None and now - cached[1] < self.settings.health_interval:
            return cached[0]
        health = self.runtime.health(deployment)
        if health is Health.READY:
            self._health_cache[deployment.ident] = (health, now)
        else:
            self._health_cache.pop(deployment.ident, None)
        return health

    def _state(self, key, keep, current, failure) -> str:
        if failure and key not in self._pending:
            return "failed"
        if keep is not None:
            return "switching"
        if current is not None and current.deployment is not None and current.deployment.key == key:
            return "restarting"
        return "starting"

    def _retire_unrouted(self, routes, observed, desired, now) -> None:
        """Drain, then stop, deployments that no route needs any more."""
        needed = {r.deployment.key for r in routes.values() if r.deployment} | {
            DeploymentKey(m, v) for (m, _), v in desired.items()
        }
        for key, (deployment, _) in observed.items():
            if key in needed or key in self._pending or key in self._stopping_keys:
                self._unrouted_since.pop(key, None)
                continue
            since = self._unrouted_since.setdefault(key, now)
            grace = 0.0 if self.settings.strategy == "recreate" else self.settings.drain_seconds
            if now - since >= grace and (now - since >= grace + 30 or self._gateway_inflight(deployment) == 0):
                self._unrouted_since.pop(key, None)
                log.info("stopping unrouted deployment", extra=_fields(key))
                self._stopping_keys[key] = self._executor.submit(self.runtime.stop, deployment)

    def _gateway_inflight(self, deployment: Deployment) -> int:
        """Requests the gateway still has in flight to ``deployment`` (0 when it cannot tell:
        the drain grace period, and 30 s on top at most, bound the wait anyway)."""
        url = self.settings.gateway_admin_url
        if not url:
            return 0
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/inflight", timeout=1) as response:  # noqa: S310
                return int(json.loads(response.read()).get(deployment.url, 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return 0

    # -- deploy work ---------------------------------------------------------------------
    def _submit_deploy(self, key: DeploymentKey, desired: dict[RouteKey, int]) -> None:
        aliases = sorted(a for (m, a), v in desired.items() if m == key.model and v == key.version)
        log.info("deploying", extra={**_fields(key), "aliases": aliases})
        future = self._executor.submit(self._deployer.deploy, key, tuple(aliases))
        future.aliases = ",".join(aliases)  # type: ignore[attr-defined]
        future.add_done_callback(lambda _: self.wake(read_registry=False))
        self._pending[key] = future

    def _collect_finished_work(self) -> None:
        for key, future in list(self._stopping_keys.items()):
            if future.done():
                del self._stopping_keys[key]
                if future.exception() is not None:
                    log.error("stop failed", extra={**_fields(key), "error": one_line(future.exception())})
        for key, future in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[key]
            aliases = getattr(future, "aliases", "")
            error = future.exception() if not future.cancelled() else RuntimeError("cancelled")
            if error is None:
                self.metrics.deploy_total.labels(key.model, aliases, "success").inc()
                log.info("deployment ready", extra={**_fields(key), "aliases": aliases})
                cleared = self._failures.pop(key, None)
                if cleared is not None and cleared.tagged:
                    self._tag_version(key, None)
            else:
                self.metrics.deploy_total.labels(key.model, aliases, "failed").inc()
                failure = self._note_failure(key, one_line(error, 500))
                log.error(
                    "deploy failed; the previous version keeps serving",
                    extra={**_fields(key), "aliases": aliases, "error": failure.error,
                           "attempt": failure.attempts, "retry_in_s": round(failure.retry_at - time.monotonic(), 1)},
                )
                failure.tagged = self._tag_version(key, failure.error)

    def _note_failure(self, key: DeploymentKey, error: str, first_retry_now: bool = False) -> _Failure:
        """Exponential back-off per deployment: never a crash loop."""
        previous = self._failures.get(key)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.settings.backoff_initial * 2 ** (attempts - 1), self.settings.backoff_max)
        if first_retry_now and attempts == 1:
            delay = 0.0
        failure = _Failure(error, attempts, time.monotonic() + delay, tagged=bool(previous and previous.tagged))
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
                client.set_model_version_tag(key.model, str(key.version), ERROR_TAG, fit(f"{stamp} {error}", MODEL_VERSION_TAG_MAX))
            return True
        except Exception as exc:  # the registry may be down: the failure is in logs and metrics anyway
            log.warning("could not tag model version", extra={**_fields(key), "error": one_line(exc)})
            return False

    def _publish_endpoint_metrics(self, routes: dict[RouteKey, Route]) -> None:
        gauge = self.metrics.endpoint_info
        gauge.clear()
        for route in routes.values():
            version = route.version if route.version is not None else route.desired_version
            gauge.labels(route.model, route.alias, str(version), route.state).set(1)


def _entry(route: Route) -> RouteEntry:
    replicas = (Replica(route.deployment.url, route.deployment.ident, 0),) if route.deployment else ()
    return RouteEntry(route.model, route.alias, route.desired_version, route.version, route.state, route.since,
                      route.last_error, replicas)


def _fields(key: DeploymentKey) -> dict:
    return {"model": key.model, "version": key.version}
