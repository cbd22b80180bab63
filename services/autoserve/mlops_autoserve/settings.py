"""Everything an operator can set, with safe defaults (loopback only, blue/green).

The click options of ``mlops autoserve`` and ``mlops gateway`` take their defaults from
these dataclasses, so a default lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DockerSettings:
    """The Docker and Swarm runtimes' own settings (``--runtime docker|swarm``)."""

    image: str = "mlops-toolkit/serving:latest"
    network: str = "host"  # or a compose network, reached as http://<container>:8080
    publish: bool = False  # also publish each container's port on 127.0.0.1
    container_tracking_uri: str | None = None  # tracking URI as seen from inside containers
    instance: str | None = None  # owner label of the containers (default: from state_dir)
    memory: str = "2g"  # per serving container (docker's mem_limit); a runaway model cannot starve the host
    cpus: float = 1.0  # per serving container
    # Swarm only (--runtime swarm): what the scheduler reserves per task, and where tasks may run.
    reserve_memory: str = "256m"
    reserve_cpus: float = 0.25
    constraints: tuple[str, ...] = ()  # e.g. "node.labels.serving==true"


@dataclass(frozen=True)
class AutoserveSettings:
    tracking_uri: str
    aliases: frozenset[str] = frozenset()  # empty: every alias
    models: frozenset[str] = frozenset()  # empty: every model
    poll_interval: float = 10.0  # registry read, seconds
    health_interval: float = 2.0  # runtime observation, seconds
    strategy: str = "blue-green"  # or "recreate"
    runtime: str = "process"
    gateway_host: str = "127.0.0.1"  # where the gateway listens (webhook URL default, logs)
    gateway_port: int = 8000
    gateway_admin_url: str | None = None  # asked for in-flight requests before a deployment stops
    control_host: str = "127.0.0.1"  # the watcher's own /health, /metrics, /webhooks/mlflow
    control_port: int = 8002
    serve_host: str = "127.0.0.1"
    port_range: tuple[int, int] = (18100, 18999)
    # Uvicorn workers per deployment: with 2, every keep-alive request paid ~44 ms more on the
    # 2-core dev machine (benchmarks/bench_serving.py), and a second worker has no core to win.
    workers: int = 1
    # auto: serve from this environment when it satisfies the model's requirements, else from
    # one built from them with uv (once, cached); local: always this one; uv: always built.
    env_manager: str = "auto"
    env_cache: Path | None = None  # built environments (process runtime) and the use ledger (default: state_dir/envs)
    env_build_timeout: float = 900.0  # seconds one environment build may take
    env_max_idle_days: float = 14.0  # an environment no deployment used this long is removed
    env_max_gb: float = 20.0  # past this, the least recently used environments not in use are removed
    ready_timeout: float = 120.0
    replicas: int = 1  # per version; the registered-model tag mlops.autoserve.replicas overrides
    min_ready: int | None = None  # replicas that must answer before a route moves (None: all)
    # Autoscaling (autoscale.py), per model: off while max_replicas is not above min_replicas.
    # Registered-model tags mlops.autoserve.min_replicas / max_replicas override both.
    min_replicas: int | None = None  # floor (None: replicas)
    max_replicas: int | None = None  # ceiling (None: the floor: no autoscaling)
    scale_target_inflight: float = 4.0  # requests in flight per replica (0: not used)
    scale_target_rps: float = 0.0  # requests per second per replica (0: not used)
    scale_up_window: float = 10.0  # seconds the load stays above target before replicas are added
    scale_down_cooldown: float = 60.0  # seconds below target, and since the last change, per replica removed
    ping_failures: int = 3  # /ping failures in a row before a ready replica leaves the route
    liveness_window: float = 30.0  # a once-ready replica failing every /ping this long is restarted
    smoke_test: bool = True
    drain_seconds: float = 2.0
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    webhook_secret: str | None = None
    webhook_max_age: float = 300.0
    state_dir: Path = field(default_factory=lambda: Path(".mlops") / "autoserve")
    leave_running: bool = False  # on exit, keep deployments for the next watcher to adopt
    docker: DockerSettings = field(default_factory=DockerSettings)
    targets_file: Path | None = None  # Prometheus file_sd JSON of every serving endpoint's /ping
    environment: str = "dev"  # MLOPS_ENVIRONMENT; in prod only approved, unblocked versions are routed

    def wants(self, model: str, alias: str) -> bool:
        return (not self.aliases or alias in self.aliases) and (not self.models or model in self.models)


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway process: where it listens and the limits that protect it."""

    state_dir: Path = field(default_factory=lambda: Path(".mlops") / "autoserve")  # reads routes.json here
    host: str = "127.0.0.1"
    port: int = 8000
    admin_host: str = "127.0.0.1"
    admin_port: int = 8001  # /endpoints, /inflight, /metrics
    request_timeout: float = 60.0  # then 504
    max_body_mb: float = 64.0  # then 413, decided from Content-Length before reading
    max_inflight: int = 256  # per route, then 429 with Retry-After
    eject_after: int = 3  # consecutive failures take a replica out of rotation
    readmit_interval: float = 1.0  # seconds between GET /ping of ejected replicas
    auth_token: str | None = None  # bearer token required on /serve when set
    shadow_queue: int = 1000  # shadow copies waiting to be sent; beyond it they are dropped (counted)
    shadow_workers: int = 4  # shadow copies in flight at once
    payload_log_rate: float = 0.0  # share of answered requests written to the app-db's payload_log (0: off)
    payload_log_db: str | None = None  # SQLAlchemy URL of the app-db (the CLI reads $APP_DB_URL)
    payload_log_retention_days: float = 7.0  # older rows are deleted (hourly)
    payload_log_buffer: int = 10_000  # rows waiting for the writer; beyond it they are dropped (counted)
    payload_log_max_body_bytes: int = 256 * 1024  # larger requests or answers are not logged (counted)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
