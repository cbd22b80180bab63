"""The control loop: a thin loop over small controllers that share one snapshot per cycle.

In the manner of Kubernetes' controller-runtime: each controller has one concern, is
level-triggered (it looks at the whole snapshot every cycle, never at a stream of events)
and idempotent; an error is isolated to its object (one model, one rollout), and a
controller that fails skips its own work for the cycle, never another's. Per cycle:

1. finished work is collected (deploys that became ready or failed, stops);
2. :class:`~desired.RegistrySource` reads the registry when due (every ``poll_interval``,
   at once when woken by a webhook) into a frozen :class:`~desired.Desired`, model by
   model; during an outage the last good one stays;
3. :class:`~observe.Observer` reads observed state back from the runtime (never from
   memory) into a :class:`~observe.Snapshot`;
4. the rollout controller (:mod:`rollouts`) steps every running rollout;
5. the route controller (:mod:`routes`: the planner, the deploy queue, draining) publishes
   the route table and queues the work; the autoscaler is its input;
6. input errors, environment clean-up and the Prometheus targets file follow.

At start the last published table seeds both the previous routes (so a restart in the
middle of a move stays blue/green) and, while the registry cannot be read, the desired state.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from types import MappingProxyType

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.routetable import TablePublisher, table_path
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.autoscale import Scaler
from mlops_autoserve.watcher.deployer import Deployer
from mlops_autoserve.watcher.desired import (
    Desired,
    RegistryReader,
    RegistrySource,
    RouteKey,
)
from mlops_autoserve.watcher.environments import Environments
from mlops_autoserve.watcher.inputerrors import InputErrorReport
from mlops_autoserve.watcher.metadata import MetadataPublisher
from mlops_autoserve.watcher.observe import Controller, Observer, Snapshot, fields
from mlops_autoserve.watcher.planner import Route
from mlops_autoserve.watcher.rollouts import RolloutController
from mlops_autoserve.watcher.routes import ERROR_TAG, RouteController
from mlops_autoserve.watcher.runtime.base import Runtime
from mlops_autoserve.watcher.targets import TargetsFile
from mlops_autoserve.watcher.workqueue import WorkQueue
from mlops_toolkit.errors import one_line

log = logging.getLogger("autoserve.reconciler")

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
        self.environments = environments
        self.reader = reader or RegistryReader(settings, metrics)
        self.source = RegistrySource(self.reader, settings.poll_interval)
        self.stopping = threading.Event()
        self.queue = WorkQueue(settings.deploy_workers, settings.deploy_workers_per_model)
        self.publisher = TablePublisher(table_path(settings.state_dir))
        self.observer = Observer(settings, runtime)
        self.rollouts = RolloutController(settings, metrics, self._client)
        self.route_controller = RouteController(
            settings, runtime, metrics, self.queue, Deployer(settings, runtime, self.stopping, environments),
            self.publisher, Scaler(settings, metrics), environments, self._client)
        self.route_controller.on_done = lambda: self.wake(read_registry=False)
        self._targets = TargetsFile(settings.targets_file) if settings.targets_file else None
        # Controllers after the routes, each on the same snapshot
        self.metadata = MetadataPublisher(settings)
        self.followers: list[Controller] = [InputErrorReport(metrics), self.metadata]
        if environments is not None:
            self.followers.append(EnvironmentPruner(environments))
        if self._targets is not None:
            self.followers.append(TargetsWriter(self._targets, self.route_controller))
        self.failing_since: float | None = None  # unix time cycles started failing
        self.last_cycle_error: str | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycles = 0

    def _client(self):
        return self.reader.client

    @property
    def routes(self) -> MappingProxyType[RouteKey, Route]:
        return self.route_controller.routes

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def wake(self, read_registry: bool = True) -> None:
        """Reconcile now (a webhook arrived, a deploy finished)."""
        if read_registry:
            self.source.due = True
        self._wake.set()

    def shutdown(self) -> None:
        """Stop the loop; stop every deployment unless told to leave them for adoption."""
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.environments is not None:
            self.environments.cancel_builds()  # a hung install never holds the shutdown
        self.queue.shutdown(wait=True, cancel=True)
        self.metadata.stop()
        if not self.settings.leave_running:
            self.publisher.publish(())  # the gateway answers 404, not 502, from now on
            for deployment in self.runtime.list():
                log.info("stopping on shutdown", extra=fields(deployment))
                self.runtime.stop(deployment)
            if self._targets is not None:
                self._targets.write(())
        self.route_controller.routes = MappingProxyType({})

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.reconcile_once()
            until_registry = self.source.next_read - time.monotonic()
            self._wake.wait(timeout=max(0.05, min(until_registry, self.settings.health_interval)))
            self._wake.clear()

    # -- one cycle -----------------------------------------------------------------------
    def reconcile_once(self) -> None:
        started = time.perf_counter()
        result = "ok"
        try:
            self.route_controller.collect_finished()
            if not self.source.refresh():
                result = "registry_error"
                self._seed_desired()
            if self.source.desired is not None:
                self._converge(self.source.desired)
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

    def _seed_desired(self) -> None:
        """Registry down at start: keep serving what the last watcher published."""
        seed = self.route_controller.seed
        if self.source.desired is None and seed is not None:
            self.source.desired = Desired({(r.model, r.alias): r.desired_version for r in seed.routes})
            log.warning("registry unreachable at start; serving the last published routes",
                        extra={"routes": len(self.source.desired.routes), "table_serial": seed.serial})

    def _converge(self, desired: Desired) -> None:
        routes = self.route_controller
        observed = self.observer.observe(routes.busy, routes.restarted)
        snap = Snapshot(desired, observed, time.monotonic(), time.time(), desired.rollouts)
        running = self._isolated(self.rollouts, snap, fallback=dict(desired.rollouts))
        if self.rollouts.ended_any:
            self.source.due = True  # the registry now says where the alias is: read it next cycle
        snap = replace(snap, rollouts=running)
        routes.reconcile(snap)  # the routes are the cycle: their failure is the cycle's
        for controller in self.followers:
            self._isolated(controller, snap)

    @staticmethod
    def _isolated(controller: Controller, snap: Snapshot, fallback=None):
        """One controller's failure is logged and skips its own work this cycle only."""
        try:
            return controller.reconcile(snap)
        except Exception as exc:  # noqa: BLE001 - isolated to this controller
            log.warning(f"{controller.name} controller failed this cycle", extra={"error": one_line(exc)})
            return fallback


class EnvironmentPruner:
    """Removes environments no deployment uses (idle, or over --env-max-gb)."""

    name = "environments"

    def __init__(self, environments: Environments) -> None:
        self.environments = environments

    def reconcile(self, snap: Snapshot) -> None:
        self.environments.maybe_prune({d.env for d, _ in snap.observed if d.env})


class TargetsWriter:
    """Prometheus file_sd targets of every serving endpoint, from the routes just published."""

    name = "targets"

    def __init__(self, targets: TargetsFile, routes: RouteController) -> None:
        self.targets, self.routes = targets, routes

    def reconcile(self, snap: Snapshot) -> None:
        self.targets.write(self.routes.routes.values())
