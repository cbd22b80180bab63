"""Observed state, read back from the runtime every cycle (never from memory): every live
deployment and whether it is ready.

Readiness comes from ``/ping``, probed at most once per health interval while a deployment
stays ready (:class:`~mlops_autoserve.watcher.health.HealthTracker` tells a slow deployment
from a dead one). Dead ones, and ones past their liveness limits, are stopped here; the
route controller's plan starts them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.desired import Desired
from mlops_autoserve.watcher.health import HealthTracker, Verdict
from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Health,
    Runtime,
)
from mlops_toolkit.errors import one_line
from mlops_toolkit.rollout import Rollout

log = logging.getLogger("autoserve.observe")

Observed = list[tuple[Deployment, bool]]  # every live deployment, and whether it is ready


@dataclass(frozen=True)
class Snapshot:
    """One cycle's view, shared by every controller: none of them reads the world alone."""

    desired: Desired
    observed: Observed
    now: float  # monotonic
    wall: float  # unix time
    # Rollouts running after the rollout controller's step this cycle (an ended one's traffic
    # goes back in this very cycle's table); before it, the registry's running ones.
    rollouts: Mapping[tuple[str, str], Rollout] = field(default_factory=dict)

    def ready(self, key: DeploymentKey) -> tuple[Deployment, ...]:
        return tuple(d for d, is_ready in self.observed if is_ready and d.key == key)


class Controller(Protocol):
    """One concern of the watcher: looks at the whole snapshot, acts, is safe to repeat."""

    name: str

    def reconcile(self, snap: Snapshot) -> object:
        """Converge this concern toward ``snap``; an exception skips this controller only."""


class Observer:
    def __init__(self, settings: AutoserveSettings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        self._health = HealthTracker(settings.ping_failures, settings.liveness_window, settings.ready_timeout)
        self._probed: dict[str, tuple[Verdict, float]] = {}  # ident -> (verdict, monotonic)

    def observe(self, busy: Callable[[Deployment], bool],
                on_restart: Callable[[Deployment, str], None]) -> Observed:
        """``busy``: being started or stopped (reported as not ready, never probed or stopped)."""
        now = time.monotonic()
        observed = []
        deployments = self.runtime.list()
        self._forget({d.ident for d in deployments})
        for deployment in deployments:
            if busy(deployment):
                observed.append((deployment, False))
                continue
            verdict, reason = self._verdict(deployment, now)
            if verdict is Verdict.RESTART:
                log.warning(f"{reason}; it will be restarted", extra=fields(deployment))
                self.runtime.stop(deployment)
                on_restart(deployment, reason)
                continue
            observed.append((deployment, verdict is Verdict.READY))
        return observed

    def _forget(self, alive: Collection[str]) -> None:
        self._health.forget(set(alive))
        for ident in [i for i in self._probed if i not in alive]:
            del self._probed[ident]

    def _verdict(self, deployment: Deployment, now: float) -> tuple[Verdict, str]:
        """Probe at most once per health interval while a deployment stays ready."""
        cached = self._probed.get(deployment.ident)
        if cached is not None and cached[0] is Verdict.READY and now - cached[1] < self.settings.health_interval:
            return cached[0], ""
        try:
            probe = self.runtime.health(deployment)
        except Exception as exc:  # noqa: BLE001 - could not check: unknown, never dead
            log.warning("health check failed", extra={**fields(deployment), "error": one_line(exc)})
            probe = Health.UNKNOWN
        verdict, reason = self._health.update(deployment.ident, probe, now, time.time() - deployment.started_at)
        self._probed[deployment.ident] = (verdict, now)
        return verdict, reason


def fields(item: DeploymentKey | Deployment) -> dict:
    """Log fields naming a deployment (or a version)."""
    key = item.key if isinstance(item, Deployment) else item
    out: dict = {"model": key.model, "version": key.version}
    if isinstance(item, Deployment):
        out["replica"] = item.replica
    return out
