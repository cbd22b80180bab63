"""Which environment a model version is served from, built before the switch.

``--env-manager auto`` (default): a version whose recorded requirements the serving
environment satisfies is served from it, as before; any other is served from an
environment built from its requirements with uv, once, and cached (:mod:`envstore`).
``uv``: always from a built environment. ``local``: always from the serving environment.

The build is the first step of a deploy: it runs in the deploy's thread while the old
version keeps serving; a failed build fails the deploy, which is contained like any other
(error tag with the resolver's reason, back-off). Builds in progress are visible in the
route table (``mlops serve status``), the log and ``autoserve_env_build_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from mlops_autoserve.watcher.envspec import ModelNeeds, build_lines, env_key, read_needs, unmet
from mlops_autoserve.watcher.envstore import (
    DockerEnvs,
    EnvBuildError,
    EnvInfo,
    ProcessEnvs,
    ServeEnv,
    to_prune,
)
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.watcher.runtime.base import DeploymentKey
from mlops_autoserve.settings import AutoserveSettings
from mlops_toolkit.errors import one_line

log = logging.getLogger("autoserve.environments")

PRUNE_INTERVAL = 600.0  # seconds between cache clean-ups (and one after every build)
RECENT_USE = 300.0  # an environment used this recently is kept whatever the limits say

__all__ = ["Build", "EnvBuildError", "Environments", "ServeEnv"]


@dataclass(frozen=True)
class Build:
    """An environment build in progress, as /endpoints shows it."""

    version: int
    env: str
    since: float  # unix time
    progress: str = "starting"


class Environments:
    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics, store: ProcessEnvs | DockerEnvs) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self._needs: dict[DeploymentKey, ModelNeeds] = {}  # a version's files never change
        self._builds: dict[DeploymentKey, Build] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    @classmethod
    def for_runtime(cls, settings: AutoserveSettings, metrics: AutoserveMetrics, runtime) -> Environments:
        cache = settings.env_cache or settings.state_dir / "envs"
        if settings.runtime in ("docker", "swarm"):  # an image derived from the serving one
            store = DockerEnvs(runtime.client, settings.docker.image, cache, settings.env_build_timeout)
        else:
            store = ProcessEnvs(cache, settings.env_build_timeout)
        return cls(settings, metrics, store)

    # -- the deploy step -----------------------------------------------------------------
    def prepare(self, key: DeploymentKey) -> ServeEnv | None:
        """The environment ``key`` runs in (None: the serving environment itself), built if needed."""
        mode = self.settings.env_manager
        if mode == "local":
            return None
        needs = self._needs_of(key)
        interpreter = self.store.interpreter()
        missing = unmet(needs, interpreter) if mode == "auto" else list(needs.requirements)
        if mode == "auto" and not missing:  # also a version without recorded requirements
            self.metrics.env_resolve_total.labels("local").inc()
            return None
        lines = build_lines(needs, interpreter.mlflow or "")
        key_hash = env_key(lines, needs.files, self.store.base())
        with self.store.locked(key_hash):
            env = self.store.get(key_hash)
            if env is not None:
                self.store.touch(key_hash)
                self.metrics.env_resolve_total.labels("hit").inc()
                log.info("environment cache hit", extra={**_fields(key), "env": key_hash})
                return env
            return self._build(key, key_hash, lines, needs, missing, interpreter.python)

    def _build(self, key: DeploymentKey, key_hash: str, lines: list[str], needs: ModelNeeds,
               missing: list[str], python: str) -> ServeEnv:
        started = time.time()
        with self._lock:
            self._builds[key] = Build(key.version, key_hash, started)
        self.metrics.env_builds_in_progress.inc()
        fields = {**_fields(key), "env": key_hash, "runtime": self.store.runtime, "unmet": missing[:20]}
        if needs.python and needs.python.split(".")[:2] != python.split(".")[:2]:
            fields["logged_python"], fields["serving_python"] = needs.python, python
        log.info("building environment", extra=fields)
        try:
            env = self.store.build(key_hash, lines, needs.files, lambda line: self._progress(key, line))
        except Exception as exc:
            seconds = time.time() - started
            self.metrics.env_build_seconds.labels("failed").observe(seconds)
            self.metrics.env_resolve_total.labels("failed").inc()
            reason = str(exc) if isinstance(exc, EnvBuildError) else one_line(exc)
            log.error("environment build failed", extra={**fields, "seconds": round(seconds, 1), "error": reason})
            raise EnvBuildError(f"environment build failed: {reason}") from None
        finally:
            self.metrics.env_builds_in_progress.dec()
            with self._lock:
                self._builds.pop(key, None)
        seconds = time.time() - started
        self.metrics.env_build_seconds.labels("success").observe(seconds)
        self.metrics.env_resolve_total.labels("built").inc()
        log.info("environment built", extra={**fields, "seconds": round(seconds, 1)})
        self._next_prune = 0.0  # the cache grew: check its limits at the next cycle
        return env

    def _progress(self, key: DeploymentKey, line: str) -> None:
        with self._lock:
            build = self._builds.get(key)
            if build is not None:
                self._builds[key] = Build(build.version, build.env, build.since, line[:120])

    def _needs_of(self, key: DeploymentKey) -> ModelNeeds:
        needs = self._needs.get(key)
        if needs is None:
            needs = read_needs(self.settings.tracking_uri, key.model, key.version)
            self._needs[key] = needs
        return needs

    # -- what status shows ---------------------------------------------------------------
    def building(self) -> dict[tuple[str, int], Build]:
        """Builds in progress by (model, version)."""
        with self._lock:
            return {(key.model, key.version): build for key, build in self._builds.items()}

    def list(self, in_use: set[str]) -> list[EnvInfo]:
        envs = [EnvInfo(**{**e.to_dict(), "in_use": e.key in in_use}) for e in self.store.list()]
        self.metrics.env_cache_bytes.set(sum(e.size_bytes for e in envs))
        return envs

    # -- hygiene -------------------------------------------------------------------------
    def maybe_prune(self, in_use: set[str]) -> None:
        """Remove what no deployment used for ``--env-max-idle-days``, then the least recently
        used past ``--env-max-gb``; never one in use. At most every PRUNE_INTERVAL seconds."""
        now = time.monotonic()
        if now < self._next_prune or self.settings.env_manager == "local":
            return
        self._next_prune = now + PRUNE_INTERVAL
        try:
            for key in in_use:
                self.store.touch(key)
            envs = self.list(in_use)
            with self._lock:
                building = {b.env for b in self._builds.values()}
            # handed to a deploy a moment ago (its process or container may not be listed yet)
            recent = {e.key for e in envs if time.time() - e.last_used < RECENT_USE}
            chosen = to_prune(envs, in_use | building | recent, time.time(), self.settings.env_max_idle_days * 86400,
                              int(self.settings.env_max_gb * 1024 ** 3))
            for env, reason in chosen:
                self.store.remove(env.key)
                self.metrics.env_removed_total.labels(reason).inc()
                log.info("environment removed", extra={"env": env.key, "reason": reason, "size_bytes": env.size_bytes,
                                                       "idle_s": round(time.time() - env.last_used)})
            if chosen:
                self.list(in_use)
        except Exception as exc:  # noqa: BLE001 - a clean-up failure never stops serving
            log.warning("environment clean-up failed", extra={"error": one_line(exc)})


def _fields(key: DeploymentKey) -> dict:
    return {"model": key.model, "version": key.version}
