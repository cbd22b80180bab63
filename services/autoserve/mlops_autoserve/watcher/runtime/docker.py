"""Deployments as Docker containers of a serving image (the default inside the compose stack).

Containers are found by label only (``mlops.autoserve=true`` plus this watcher's instance
label), never by name patterns. They start with ``init=True`` (PID 1 forwards SIGTERM: stop
takes 0.2 s, not 10) and restart policy ``unless-stopped`` (they survive a daemon restart),
as the image's non-root user, with ``no-new-privileges``, memory and CPU limits and rotated
logs. The image must already be on the Docker host: it is never pulled (an unqualified name
would silently come from a public registry).

Networking: ``host`` (the container serves on a loopback port from the range: what tests
and a host-run watcher use), or a named network where the gateway reaches the container as
``http://<name>:8080``, optionally also published on 127.0.0.1 for direct access.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.envstore import ServeEnv
from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Health,
    ping,
    slug,
)
from mlops_toolkit.ops.processes import port_is_open

LABEL = "mlops.autoserve"
# Passed on when set: models whose artifacts live in S3/MinIO without the server's proxy.
ARTIFACT_ENV = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                "MLFLOW_S3_IGNORE_TLS")
CONTAINER_PORT = 8080
# json-file logs: at most 30 MB per container; each line carries the container's name and its
# autoserve labels ("attrs"), which is how Promtail names it from the log file alone
LOG_OPTIONS = {"max-size": "10m", "max-file": "3", "labels": "mlops.autoserve,mlops.model,mlops.version",
               "tag": "{{.Name}}"}
STOP_TIMEOUT = 10

log = logging.getLogger("autoserve.docker")


class BadLabels(ValueError):
    """A container or service with autoserve's owner labels whose other labels it did not write."""


@dataclass(frozen=True)
class Labelled:
    """What autoserve's labels on a container (or a Swarm service) say."""

    key: DeploymentKey
    started_at: float = 0.0
    replica: int = 0
    port: int = 0
    aliases: tuple[str, ...] = ()
    env: str | None = None


def read_labels(labels: dict[str, str] | None) -> Labelled:
    """Parse autoserve's labels; BadLabels when the model is missing or a number is not one."""
    labels = labels or {}
    model = labels.get("mlops.model")
    if not model:
        raise BadLabels("no mlops.model label")
    return Labelled(
        key=DeploymentKey(model, _number(labels, "mlops.version", int, None)),
        started_at=_number(labels, "mlops.started_at", float, 0.0),
        replica=_number(labels, "mlops.replica", int, 0),
        port=_number(labels, "mlops.port", int, 0, high=65535),
        aliases=tuple(a for a in labels.get("mlops.aliases", "").split(",") if a),
        env=labels.get("mlops.env") or None,
    )


def _number(labels: dict[str, str], name: str, kind: type, default: float | None, high: float = math.inf):
    text = labels.get(name) or ""
    if not text and default is not None:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BadLabels(f"{name}={text[:40]!r} is not a number") from None
    if not 0 <= value <= high or value == math.inf:  # also NaN
        raise BadLabels(f"{name}={text[:40]!r} is out of range")
    return value


def usable(items: list, labels_of: Callable[[object], dict], warned: set[str],
           what: str) -> list[tuple[object, Labelled]]:
    """Each container (or service) with its parsed labels; one whose labels cannot be read is
    skipped, with one warning for as long as it exists (``warned``: the ids reported)."""
    good, bad = [], set()
    for item in items:
        try:
            good.append((item, read_labels(labels_of(item))))
        except BadLabels as exc:
            bad.add(item.id)
            if item.id not in warned:
                log.warning(f"{what} skipped: its autoserve labels are unusable",
                            extra={what: item.name, "id": item.id, "error": str(exc)})
    warned.clear()  # forget those gone (or fixed): the set stays as small as the listing
    warned.update(bad)
    return good


def instance_id(settings: AutoserveSettings) -> str:
    """Which watcher owns a container: configured, or derived from the state directory."""
    if settings.docker.instance:
        return settings.docker.instance
    return hashlib.sha1(str(settings.state_dir.resolve()).encode()).hexdigest()[:10]


def serve_command(key: DeploymentKey, host: str, port: int, workers: int) -> list[str]:
    """The serving container's command: the version by number (an alias is resolved once, at start)."""
    return ["mlflow", "models", "serve", "-m", f"models:/{key.model}/{key.version}", "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers)]


def serving_environment(settings: AutoserveSettings) -> dict[str, str]:
    """The registry as the container sees it, and the artifact store's credentials when set."""
    # No uvicorn access log: a line per request would be most of what Docker's log keeps.
    return {"MLFLOW_TRACKING_URI": settings.docker.container_tracking_uri or settings.tracking_uri,
            "UVICORN_ACCESS_LOG": "false",
            **{name: os.environ[name] for name in ARTIFACT_ENV if os.environ.get(name)}}


def require_local_image(client, image: str) -> None:
    """Fail the deploy in one line when the image is not on the engine: never pull (an
    unqualified name would silently come from a public registry)."""
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"serving image {image} is not on this Docker host: build it (make images), or load "
                           "it on every node; autoserve never pulls it from a registry") from None


def remove_stale(collection, name: str, instance: str, labels_of, **remove_options) -> None:
    """A dead container (or service) of ours may still hold the name; anything else is left alone."""
    import docker

    try:
        existing = collection.get(name)
    except docker.errors.NotFound:
        return
    if labels_of(existing).get(f"{LABEL}.instance") != instance:
        raise RuntimeError(f"{name} exists on the Docker engine and is not managed by this watcher")
    existing.remove(**remove_options)


class DockerRuntime:
    manages_replicas = False  # one deployment per replica (see Runtime)

    def want(self, counts: dict[DeploymentKey, int], floors: dict[str, int]) -> None:
        """Never called: the watcher starts and stops each replica itself."""

    def __init__(self, settings: AutoserveSettings) -> None:
        import docker

        self.settings = settings
        self.docker = docker
        self.client = docker.from_env(timeout=30)
        self.instance = instance_id(settings)
        self._lock = threading.Lock()
        self._reserved_ports: set[int] = set()
        self._bad_labels: set[str] = set()  # containers already warned about

    @property
    def host_network(self) -> bool:
        return self.settings.docker.network == "host"

    # -- Runtime -------------------------------------------------------------------------
    def list(self) -> list[Deployment]:
        containers = self.client.containers.list(
            all=True, filters={"label": [f"{LABEL}=true", f"{LABEL}.instance={self.instance}"]}
        )
        return [self._deployment(c, info) for c, info in usable(containers, lambda c: c.labels, self._bad_labels,
                                                                  "container")]

    def start(self, key: DeploymentKey, aliases: tuple[str, ...] = (), replica: int = 0,
              env: ServeEnv | None = None) -> Deployment:
        name = f"mlops-serve-{self.instance}-{slug(key, replica)}"
        remove_stale(self.client.containers, name, self.instance, lambda c: c.labels, force=True)
        with self._lock:
            port = self._free_port() if (self.host_network or self.settings.docker.publish) else 0
            self._reserved_ports.add(port)
        try:
            serve_host, serve_port = ("127.0.0.1", port) if self.host_network else ("0.0.0.0", CONTAINER_PORT)  # noqa: S104 - inside the container's own network namespace
            options = {"network_mode": "host"} if self.host_network else {"network": self.settings.docker.network}
            if self.settings.docker.publish and not self.host_network:
                options["ports"] = {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", port)}
            image = env.image if env is not None and env.image else self.settings.docker.image
            require_local_image(self.client, image)
            container = self.client.containers.run(
                image,
                serve_command(key, serve_host, serve_port, self.settings.workers),
                name=name,
                detach=True,
                init=True,
                restart_policy={"Name": "unless-stopped"},
                security_opt=["no-new-privileges:true"],
                mem_limit=self.settings.docker.memory,
                nano_cpus=int(self.settings.docker.cpus * 1e9),
                log_config=self.docker.types.LogConfig(type="json-file", config=LOG_OPTIONS),
                environment=serving_environment(self.settings),
                labels={
                    LABEL: "true", f"{LABEL}.instance": self.instance, "mlops.model": key.model,
                    "mlops.version": str(key.version), "mlops.replica": str(replica),
                    "mlops.aliases": ",".join(aliases), "mlops.port": str(port),
                    "mlops.started_at": f"{time.time():.3f}", "mlops.env": env.key if env is not None else "",
                },
                **options,
            )
        finally:
            with self._lock:
                self._reserved_ports.discard(port)
        return self._deployment(container)

    def health(self, deployment: Deployment) -> Health:
        try:
            container = self.client.containers.get(deployment.ident)
        except self.docker.errors.NotFound:
            return Health.DEAD
        except (self.docker.errors.APIError, self.docker.errors.DockerException, OSError):
            return Health.UNKNOWN  # the daemon did not answer: that says nothing about the container
        state = container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead", "removing") or container.attrs.get("RestartCount", 0) > 0:
            return Health.DEAD  # a restart means it crashed: replace it rather than wait
        if state.get("Status") != "running":
            return Health.STARTING
        return Health.READY if ping(deployment.url) else Health.STARTING

    def stop(self, deployment: Deployment) -> None:
        try:
            container = self.client.containers.get(deployment.ident)
        except self.docker.errors.NotFound:
            return
        try:
            container.stop(timeout=STOP_TIMEOUT)
        except self.docker.errors.APIError:
            pass
        try:
            container.remove(force=True)
        except self.docker.errors.NotFound:
            pass

    # -- helpers -------------------------------------------------------------------------
    def _deployment(self, container, info: Labelled | None = None) -> Deployment:
        info = info or read_labels(container.labels)
        port = info.port
        if self.host_network or (self.settings.docker.publish and port):
            url = f"http://127.0.0.1:{port}"
        else:
            url = f"http://{container.name}:{CONTAINER_PORT}"
        return Deployment(
            key=info.key,
            url=url,
            ident=container.id,
            started_at=info.started_at,
            replica=info.replica,
            port=port,
            aliases=info.aliases,
            name=container.name,
            env=info.env,
        )

    def _free_port(self) -> int:
        used = {d.port for d in self.list() if d.port} | self._reserved_ports
        low, high = self.settings.port_range
        for port in range(low, high + 1):
            if port not in used and not port_is_open("127.0.0.1", port):
                return port
        raise RuntimeError(f"no free port in {low}-{high}")
