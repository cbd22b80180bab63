"""The runtime contract: four operations, observed state always read back from the runtime."""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from typing import Protocol

from mlops_autoserve.watcher.envstore import ServeEnv
from mlops_toolkit import http

PING_TIMEOUT = 1.0


@dataclass(frozen=True, order=True)
class DeploymentKey:
    """Deployments are keyed by model version; aliases are only routes onto them."""

    model: str
    version: int

    def __str__(self) -> str:
        return f"{self.model}/v{self.version}"


@dataclass(frozen=True)
class Endpoint:
    """One copy of a deployment that answers requests: the deployment itself, or one task of
    a deployment whose copies the runtime keeps (a Swarm service's tasks)."""

    url: str
    ident: str  # pid, container id or task id
    index: int = 0


@dataclass(frozen=True)
class Deployment:
    key: DeploymentKey
    url: str  # base URL: {url}/ping, {url}/invocations
    ident: str  # pid or container id
    started_at: float
    replica: int = 0  # index among the version's replicas (names, records and labels carry it)
    # What the runtime knows besides (not part of the identity):
    port: int = field(default=0, compare=False)  # host port; 0 when nothing is published
    aliases: tuple[str, ...] = field(default=(), compare=False)  # the aliases it was started for
    name: str = field(default="", compare=False)  # container name (Docker)
    log_path: str | None = field(default=None, compare=False)  # its output (processes)
    record_path: str | None = field(default=None, compare=False)  # its record in the state dir (processes)
    tmp_dir: str | None = field(default=None, compare=False)  # its own TMPDIR, removed on stop (processes)
    env: str | None = field(default=None, compare=False)  # key of the built environment it runs in (None: the serving one)
    # Its running copies, when the runtime keeps them itself (Swarm: the service's healthy tasks).
    endpoints: tuple[Endpoint, ...] | None = field(default=None, compare=False)

    def serving(self) -> tuple[Endpoint, ...]:
        """Where its requests go: each running copy, or the deployment itself."""
        if self.endpoints is None:
            return (Endpoint(self.url, self.ident, self.replica),)
        return self.endpoints


class Health(enum.Enum):
    READY = "ready"
    STARTING = "starting"  # alive, but GET /ping did not answer 200
    DEAD = "dead"  # the process or container is gone: it can never answer again
    UNKNOWN = "unknown"  # could not check (runtime API error): never treated as dead


class Runtime(Protocol):
    """What every runtime does, and what it can do (``manages_replicas``)."""

    # Capability: True when one deployment per version holds all its copies and the runtime
    # keeps their count itself (a Swarm service's tasks): the watcher then plans one
    # deployment per version and hands the counts to :meth:`want` every cycle. False: the
    # watcher starts and stops each replica as a deployment of its own.
    manages_replicas: bool

    def want(self, counts: dict[DeploymentKey, int], floors: dict[str, int]) -> None:
        """Only when ``manages_replicas``: run ``counts[key]`` copies of each planned version
        (``floors``: each model's floor, for readiness)."""

    def list(self) -> list[Deployment]:
        """Every deployment this runtime runs for autoserve, alive or starting."""

    def start(self, key: DeploymentKey, aliases: tuple[str, ...] = (), replica: int = 0,
              env: ServeEnv | None = None) -> Deployment:
        """Start replica ``replica`` of ``key`` (for ``aliases``, as a label) in ``env`` (None:
        the serving environment); return at once: readiness is polled with ``health``."""

    def health(self, deployment: Deployment) -> Health:
        """READY when GET /ping answers 200, STARTING when it does not (yet), DEAD when the
        process/container is gone, UNKNOWN when the runtime itself could not be asked."""

    def stop(self, deployment: Deployment) -> None:
        """Stop it and remove what it left behind; idempotent."""


def slug(key: DeploymentKey, replica: int = 0) -> str:
    """A file- and container-safe name for any model name (spaces, dots, unicode); replica 0
    keeps the name it had before replicas existed, so older deployments are still adopted."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", key.model).strip("-.")[:40] or "model"
    digest = hashlib.sha1(key.model.encode()).hexdigest()[:8]
    return f"{readable}-{digest}-v{key.version}" + (f"-r{replica}" if replica else "")


def ping(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """GET /ping (HEAD answers 405 on mlflow models serve)."""
    return http.answers(f"{url}/ping", timeout)
