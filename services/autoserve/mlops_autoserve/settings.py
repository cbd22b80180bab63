"""Everything an operator can set, with safe defaults (loopback only, blue/green)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class AutoserveSettings:
    tracking_uri: str
    aliases: frozenset[str] = frozenset()  # empty: every alias
    models: frozenset[str] = frozenset()  # empty: every model
    poll_interval: float = 10.0  # registry read, seconds
    health_interval: float = 2.0  # runtime observation, seconds
    strategy: str = "blue-green"  # or "recreate"
    runtime: str = "process"
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    serve_host: str = "127.0.0.1"
    port_range: tuple[int, int] = (18100, 18999)
    workers: int = 1  # FACTS: >1 uvicorn worker adds ~44 ms per keep-alive request here
    env_manager: str = "local"
    ready_timeout: float = 120.0
    smoke_test: bool = True
    drain_seconds: float = 2.0
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    webhook_secret: str | None = None
    webhook_max_age: float = 300.0
    state_dir: Path = field(default_factory=lambda: Path(".mlops") / "autoserve")
    leave_running: bool = False  # on exit, keep deployments for the next watcher to adopt
    instance: str | None = None  # owner label of Docker containers (default: from state_dir)
    docker_image: str = "mlops-toolkit/serving:latest"
    docker_network: str = "host"  # or a compose network, reached as http://<container>:8080
    docker_publish: bool = False  # also publish each container's port on 127.0.0.1
    container_tracking_uri: str | None = None  # tracking URI as seen from inside containers
    targets_file: Path | None = None  # Prometheus file_sd JSON of every serving endpoint's /ping

    def wants(self, model: str, alias: str) -> bool:
        return (not self.aliases or alias in self.aliases) and (not self.models or model in self.models)
