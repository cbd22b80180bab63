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

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.envspec import (
    ModelNeeds,
    build_lines,
    env_key,
    read_needs,
    unmet,
)
from mlops_autoserve.watcher.envstore import (
    DOWNLOAD_CACHE_KIND,
    DockerEnvs,
    EnvBuildError,
    EnvInfo,
    ProcessEnvs,
    ServeEnv,
    to_prune,
)
from mlops_autoserve.watcher.runtime.base import DeploymentKey
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


MAX_BACKOFFS = 1024  # environment keys whose failed build is remembered (the oldest is forgotten first)
WAITING = "waiting for the same environment's build"


class _Flight:
    """The one build of an environment key in progress; every other prepare() of the key waits
    for it and takes its result (the environment, or its error) instead of building again."""

    __slots__ = ("done", "env", "error", "since")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.since = time.time()
        self.env: ServeEnv | None = None
        self.error: str | None = None  # set when the build failed


@dataclass(frozen=True)
class _BackOff:
    """A key whose last build failed: not built again before ``until`` (monotonic)."""

    error: str
    failures: int
    until: float


class Environments:
    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics, store: ProcessEnvs | DockerEnvs) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self._needs: dict[DeploymentKey, ModelNeeds] = {}  # a version's files never change
        self._builds: dict[DeploymentKey, Build] = {}
        self._flights: dict[str, _Flight] = {}  # by environment key: the build every prepare() of it waits for
        self._backoffs: dict[str, _BackOff] = {}  # by environment key: its last build failed
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def cancel_builds(self) -> None:
        """The watcher is stopping: end the builds running now (where the store can)."""
        cancel = getattr(self.store, "cancel", None)
        if cancel is not None:
            cancel()

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
        return self._once(key, key_hash, lines, needs, missing, interpreter.python)

    def _once(self, key: DeploymentKey, key_hash: str, lines: list[str], needs: ModelNeeds, missing: list[str],
              python: str) -> ServeEnv:
        """One build per environment key at a time, its result shared by every prepare() of the
        key meanwhile (other replicas, other versions with the same requirements): a failed
        build fails them all once, with its error, and the key is not built again for a back-off
        (``backoff_initial`` doubling up to ``backoff_max``); until then prepare() raises that
        error at once, so deploys queued behind a failing build do not each build it again."""
        while True:
            with self._lock:
                backoff = self._backoffs.get(key_hash)
                if backoff is not None and time.monotonic() < backoff.until:
                    self.metrics.env_resolve_total.labels("failed").inc()
                    raise EnvBuildError(backoff.error)
                flight = self._flights.get(key_hash)
                if flight is None:
                    flight = self._flights[key_hash] = _Flight()
                    break
                shown = key not in self._builds  # status shows this version waiting on the build
                if shown:
                    self._builds[key] = Build(key.version, key_hash, flight.since, WAITING)
            log.info(WAITING, extra={**_fields(key), "env": key_hash})
            try:
                flight.done.wait()
            finally:
                if shown:
                    with self._lock:
                        self._builds.pop(key, None)
            if flight.error is not None:
                self.metrics.env_resolve_total.labels("failed").inc()
                raise EnvBuildError(flight.error)
            if flight.env is not None:
                self.store.touch(key_hash)
                self.metrics.env_resolve_total.labels("hit").inc()
                return flight.env
            # the build ended without a result (interrupted): this caller builds it instead
        try:
            flight.env = self._cached_or_built(key, key_hash, lines, needs, missing, python)
            with self._lock:
                self._backoffs.pop(key_hash, None)
            return flight.env
        except EnvBuildError as exc:
            flight.error = str(exc)
            with self._lock:
                previous = self._backoffs.pop(key_hash, None)
                failures = previous.failures + 1 if previous is not None else 1
                delay = min(self.settings.backoff_initial * 2 ** (failures - 1), self.settings.backoff_max)
                self._backoffs[key_hash] = _BackOff(flight.error, failures, time.monotonic() + delay)
                while len(self._backoffs) > MAX_BACKOFFS:
                    del self._backoffs[next(iter(self._backoffs))]
            log.info("environment not built again before its back-off",
                     extra={**_fields(key), "env": key_hash, "failures": failures, "retry_in_s": round(delay, 1)})
            raise
        finally:
            with self._lock:
                del self._flights[key_hash]
            flight.done.set()

    def _cached_or_built(self, key: DeploymentKey, key_hash: str, lines: list[str], needs: ModelNeeds,
                         missing: list[str], python: str) -> ServeEnv:
        """From the cache, else built; under the store's lock, which other watchers sharing the
        cache take too (one of them builds, the others find its result)."""
        with self.store.locked(key_hash):
            env = self.store.get(key_hash)
            if env is not None:
                self.store.touch(key_hash)
                self.metrics.env_resolve_total.labels("hit").inc()
                log.info("environment cache hit", extra={**_fields(key), "env": key_hash})
                return env
            return self._build(key, key_hash, lines, needs, missing, python)

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
        """The built environments, then uv's download cache (process runtime) as one more row
        (``kind``): its size counts toward ``--env-max-gb`` like theirs."""
        envs = [EnvInfo(**{**e.to_dict(), "in_use": e.key in in_use}) for e in self.store.list()]
        cache = self.store.download_cache_info()
        envs += [cache] if cache is not None else []
        self.metrics.env_cache_bytes.set(sum(e.size_bytes for e in envs))
        return envs

    # -- hygiene -------------------------------------------------------------------------
    def maybe_prune(self, in_use: set[str]) -> None:
        """Remove what no deployment used for ``--env-max-idle-days``; past ``--env-max-gb``
        (environments and uv's download cache together), shrink the cache first (the cheapest
        to lose: only downloads), then remove the least recently used environments; never
        one in use. At most every PRUNE_INTERVAL seconds."""
        now = time.monotonic()
        if now < self._next_prune or self.settings.env_manager == "local":
            return
        self._next_prune = now + PRUNE_INTERVAL
        try:
            for key in in_use:
                self.store.touch(key)
            envs = self.list(in_use)
            cache = next((e for e in envs if e.kind == DOWNLOAD_CACHE_KIND), None)
            envs = [e for e in envs if e.kind != DOWNLOAD_CACHE_KIND]
            with self._lock:
                building = {b.env for b in self._builds.values()}
            limit, built = int(self.settings.env_max_gb * 1024 ** 3), sum(e.size_bytes for e in envs)
            shrink = cache is not None and built + cache.size_bytes > limit and not building  # a build writes to it
            if shrink:
                cache = self._shrink_download_cache(cache, limit - built)
            # handed to a deploy a moment ago (its process or container may not be listed yet)
            recent = {e.key for e in envs if time.time() - e.last_used < RECENT_USE}
            chosen = to_prune(envs, in_use | building | recent, time.time(), self.settings.env_max_idle_days * 86400,
                              max(0, limit - (cache.size_bytes if cache is not None else 0)))
            for env, reason in chosen:
                self.store.remove(env.key)
                self.metrics.env_removed_total.labels(reason).inc()
                log.info("environment removed", extra={"env": env.key, "reason": reason, "size_bytes": env.size_bytes,
                                                       "idle_s": round(time.time() - env.last_used)})
            if chosen or shrink:
                self.list(in_use)  # the gauge of the cache's size
        except Exception as exc:  # noqa: BLE001 - a clean-up failure never stops serving
            log.warning("environment clean-up failed", extra={"error": one_line(exc)})

    def _shrink_download_cache(self, cache: EnvInfo, room: int) -> EnvInfo | None:
        """Fit uv's download cache in ``room`` bytes: ``uv cache prune`` (what nothing refers
        to), then, if still too big, ``uv cache clean``. Returns the cache as it is after."""
        for everything in (False, True):
            try:
                self.store.clean_download_cache(everything)
            except EnvBuildError as exc:  # e.g. another watcher's build holds it: next time
                log.warning("download cache clean-up failed", extra={"cache": cache.location, "error": str(exc)})
                return cache
            after = self.store.download_cache_info()
            size = after.size_bytes if after is not None else 0
            log.info("download cache cleaned", extra={"cache": cache.location, "size_bytes": size,
                                                      "how": "clean" if everything else "prune",
                                                      "freed_bytes": cache.size_bytes - size})
            if after is None or size <= room:
                return after
            cache = after
        return cache


def _fields(key: DeploymentKey) -> dict:
    return {"model": key.model, "version": key.version}
