"""The runtime contract: four operations, observed state always read back from the runtime."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, order=True)
class DeploymentKey:
    """Deployments are keyed by model version; aliases are only routes onto them."""

    model: str
    version: int

    def __str__(self) -> str:
        return f"{self.model}/v{self.version}"


@dataclass(frozen=True)
class Deployment:
    key: DeploymentKey
    url: str  # base URL: {url}/ping, {url}/invocations
    ident: str  # pid or container id
    started_at: float
    details: dict = field(default_factory=dict, compare=False, hash=False)


class Health(enum.Enum):
    READY = "ready"
    STARTING = "starting"
    DEAD = "dead"


class Runtime(Protocol):
    def list(self) -> list[Deployment]:
        """Every deployment this runtime runs for autoserve, alive or starting."""

    def start(self, key: DeploymentKey) -> Deployment:
        """Start serving ``key``; return at once (readiness is polled with ``health``)."""

    def health(self, deployment: Deployment) -> Health:
        """READY when GET /ping answers 200, DEAD when it can never answer again."""

    def stop(self, deployment: Deployment) -> None:
        """Stop it and remove what it left behind; idempotent."""
