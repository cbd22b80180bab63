"""Everything an operator can set, with safe defaults (loopback only, blue/green).

Each setting is declared once, on its field (``setting(...)``): default, type and range,
help, group, option and env var. ``mlops autoserve`` and ``mlops gateway`` generate their
options from these declarations (:mod:`mlops_autoserve.options`), and the checks between
settings run here, in ``__post_init__``: a bad combination is refused with the same one
line whether it came from an option, an env var or code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import click

from mlops_autoserve.options import (
    AUTOSCALING,
    DOCKER,
    ENVIRONMENTS,
    GATEWAY,
    WATCHER,
    Names,
    flag_of,
    setting,
)
from mlops_toolkit.cli.common import PortRange
from mlops_toolkit.errors import ValidationError

PORT = click.IntRange(1, 65535)


def in_bytes(mb_setting: str) -> property:
    """A read-only view of the ``mb_setting`` field in bytes."""
    return property(lambda self: int(getattr(self, mb_setting) * 1024 * 1024), doc=f"{mb_setting}, in bytes")


def token_reader(flag: str):  # noqa: ANN201
    """A parser of a token file given with ``flag``: one word (the trailing newline dropped)."""

    def read(path: Path) -> str:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ValidationError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
        if not token or any(c.isspace() for c in token):
            raise ValidationError(f"{flag} {path} must hold one token without spaces")
        return token

    return read


read_token = token_reader("--auth-token-file")


@dataclass(frozen=True)
class DockerSettings:
    """The Docker and Swarm runtimes' own settings (``--runtime docker|swarm``)."""

    SWARM_ONLY: ClassVar[frozenset[str]] = frozenset({"reserve_memory", "reserve_cpus", "constraints"})

    image: str = setting("mlops-toolkit/serving:latest", flag="--docker-image", group=DOCKER, metavar="IMAGE",
                         help="Serving image of every deployment (on the Docker host already: never pulled).")
    network: str = setting("host", flag="--docker-network", group=DOCKER, metavar="NAME",
                           help="'host', or a network where the gateway reaches containers by name.")
    publish: bool = setting(False, flag="--docker-publish", group=DOCKER,
                            help="Also publish each container's port on 127.0.0.1 (Swarm: each task's port on its "
                                 "node, every address; the gateway calls the tasks there).")
    container_tracking_uri: str | None = setting(None, flag="--container-tracking-uri", group=DOCKER, metavar="URI",
                                                 help="Tracking URI as containers see it (default: --tracking-uri).")
    instance: str | None = setting(None, flag="--instance", group=DOCKER, metavar="NAME",
                                   help="Owner label for containers (default: derived from --state-dir).")
    # docker's mem_limit: a runaway model cannot starve the host
    memory: str = setting("2g", flag="--docker-memory", group=DOCKER, metavar="SIZE",
                          help="Memory limit of each serving container (e.g. 512m, 2g).")
    cpus: float = setting(1.0, flag="--docker-cpus", group=DOCKER, type=click.FloatRange(min=0.01),
                          help="CPU limit of each serving container.")
    # Swarm only (--runtime swarm): what the scheduler reserves per task, and where tasks may run.
    reserve_memory: str = setting("256m", flag="--swarm-reserve-memory", group=DOCKER, metavar="SIZE",
                                  help="Memory Swarm reserves for each task (a node without it free gets no task).")
    reserve_cpus: float = setting(0.25, flag="--swarm-reserve-cpus", group=DOCKER, type=click.FloatRange(min=0),
                                  help="CPUs Swarm reserves for each task.")
    constraints: tuple[str, ...] = setting((), flag="--swarm-constraint", group=DOCKER, metavar="EXPR", multiple=True,
                                           show_default=False,
                                           help="Placement constraint of every serving task, e.g. "
                                                "node.labels.serving==true (repeatable; in the env var: "
                                                "separated by spaces).")


@dataclass(frozen=True)
class AutoserveSettings:
    tracking_uri: str = setting(flag="--tracking-uri", group=WATCHER, envvar="MLFLOW_TRACKING_URI")  # every command's
    aliases: frozenset[str] = setting(frozenset(), flag="--aliases", group=WATCHER, type=Names(), metavar="A,B",
                                      show_default=False, help="Aliases to serve (default: all).")
    models: frozenset[str] = setting(frozenset(), flag="--models", group=WATCHER, type=Names(), metavar="M,N",
                                     show_default=False, help="Only these registered models (default: all).")
    poll_interval: float = setting(10.0, flag="--poll-interval", group=WATCHER, type=click.FloatRange(min=0.1),
                                   help="Seconds between registry reads.")
    health_interval: float = 2.0  # runtime observation, seconds
    strategy: str = setting("blue-green", flag="--strategy", group=WATCHER,
                            type=click.Choice(["blue-green", "recreate"]),
                            help="blue-green: an alias keeps its old version while the new one gets ready; "
                                 "recreate: it drops the old one at once.")
    runtime: str = setting("process", flag="--runtime", group=WATCHER,
                           type=click.Choice(["process", "docker", "swarm"]),
                           help="Local processes, Docker containers of --docker-image, or one Docker Swarm service "
                                "per version (its replicas Swarm's tasks; the engine must be a swarm manager).")
    gateway_host: str = "127.0.0.1"  # where the gateway listens (webhook URL default, logs)
    gateway_port: int = 8000
    gateway_admin_port: int = 8001  # the gateway's admin port: the watcher's must differ when it runs the gateway
    gateway_instances: int = setting(1, flag="--gateway-instances", group=GATEWAY, type=click.IntRange(1, 64),
                                     envvar="MLOPS_GATEWAY_INSTANCES",
                                     help="Gateway processes on --port (`mlops gateway --instances`), each restarted "
                                          "within 1 s when it dies; instance i has admin port --admin-port + i.")
    gateway_admin_urls: tuple[str, ...] = setting((), flag="--gateway-admin-url", group=WATCHER, metavar="URL",
                                                  multiple=True, show_default=False,
                                                  help="Gateway admin URL the watcher reads load, in-flight requests "
                                                       "and rollout figures from (repeatable; default: the gateway "
                                                       "started here). Gateways registered in --state-dir are read "
                                                       "too.")
    # The admin port's bearer token (--admin-token-file): sent on every read of a gateway's figures.
    gateway_admin_token: str | None = field(default=None, repr=False)
    run_gateway: bool = setting(True, flag="--no-gateway", group=WATCHER, invert=True,
                                help="Run the watcher alone; `mlops gateway` serves its route table.")
    control_host: str = "127.0.0.1"  # the watcher's own /health, /metrics, /webhooks/mlflow
    control_port: int = setting(8002, flag="--watcher-port", group=WATCHER, type=PORT,
                                help="The watcher's own /health, /metrics and /webhooks/mlflow (on --host).")
    serve_host: str = "127.0.0.1"
    port_range: tuple[int, int] = setting((18100, 18999), flag="--port-range", group=WATCHER, type=PortRange(),
                                          metavar="LOW-HIGH", as_text=lambda r: f"{r[0]}-{r[1]}",
                                          help="Ports for the model deployments.")
    # Uvicorn workers per deployment: with 2, every keep-alive request paid ~44 ms more on the
    # 2-core dev machine (benchmarks/bench_serving.py), and a second worker has no core to win.
    workers: int = setting(1, flag="--workers", group=WATCHER, type=click.IntRange(min=1),
                           help="Uvicorn workers per deployment.")
    env_manager: str = setting("auto", flag="--env-manager", group=ENVIRONMENTS,
                               type=click.Choice(["auto", "local", "uv"]),
                               help="auto: serve from this environment (the image's, with Docker) when it satisfies "
                                    "the version's requirements.txt, else from one built from them with uv, once, "
                                    "and cached; local: always this environment; uv: always a built one.")
    env_cache: Path | None = setting(None, flag="--env-cache", group=ENVIRONMENTS, metavar="DIR",
                                     type=click.Path(file_okay=False, path_type=Path),
                                     help="Built environments (process runtime) and their use records "
                                          "(default: STATE_DIR/envs).")
    env_build_timeout: float = setting(900.0, flag="--env-build-timeout", group=ENVIRONMENTS,
                                       type=click.FloatRange(min=1),
                                       help="Seconds one environment build may take before the deploy fails.")
    env_max_idle_days: float = setting(14.0, flag="--env-max-idle-days", group=ENVIRONMENTS,
                                       type=click.FloatRange(min=0),
                                       help="Built environments no deployment used this long are removed.")
    # 0 keeps only the environments in use (and those building or just handed to a deploy)
    env_max_gb: float = setting(20.0, flag="--env-max-gb", group=ENVIRONMENTS, type=click.FloatRange(min=0),
                                help="Past this size the least recently used environments not in use are removed.")
    ready_timeout: float = setting(120.0, flag="--ready-timeout", group=WATCHER, type=click.FloatRange(min=1),
                                   help="Seconds a new deployment may take to answer /ping before it is restarted.")
    deploy_workers: int = setting(8, flag="--deploy-workers", group=WATCHER, type=click.IntRange(min=1),
                                  help="Deploys and environment builds running at once, all models together.")
    deploy_workers_per_model: int = setting(2, flag="--deploy-workers-per-model", group=WATCHER,
                                            type=click.IntRange(min=1),
                                            help="Deploys and environment builds running at once for one model "
                                                 "(one model's slow builds never hold every slot).")
    replicas: int = setting(1, flag="--replicas", group=WATCHER, type=click.IntRange(1, 32),
                            help="Replicas per served version (a model's tag mlops.autoserve.replicas overrides).")
    # None: all. Not checked against --replicas: a model's tag may ask for more replicas, and a
    # route needs at most as many as it has (planner.py).
    min_ready: int | None = setting(None, flag="--min-ready", group=WATCHER, type=click.IntRange(min=1), metavar="N",
                                    help="Replicas that must answer before a route moves to a new version "
                                         "(default: all).")
    # Autoscaling (autoscale.py), per model: off while max_replicas is not above min_replicas.
    # Registered-model tags mlops.autoserve.min_replicas / max_replicas override both.
    min_replicas: int | None = setting(None, flag="--min-replicas", group=AUTOSCALING, type=click.IntRange(1, 32),
                                       metavar="N",
                                       help="Autoscaling floor per served version (default: --replicas; tag "
                                            "mlops.autoserve.min_replicas overrides).")
    max_replicas: int | None = setting(None, flag="--max-replicas", group=AUTOSCALING, type=click.IntRange(1, 32),
                                       metavar="N",
                                       help="Autoscaling ceiling per served version (default: the floor, i.e. no "
                                            "autoscaling; tag mlops.autoserve.max_replicas overrides).")
    scale_target_inflight: float = setting(4.0, flag="--scale-target-inflight", group=AUTOSCALING,
                                           type=click.FloatRange(min=0),
                                           help="Requests in flight per replica the autoscaler aims at (0: not used).")
    scale_target_rps: float = setting(0.0, flag="--scale-target-rps", group=AUTOSCALING, type=click.FloatRange(min=0),
                                      help="Requests per second per replica the autoscaler aims at (0: not used).")
    scale_up_window: float = setting(10.0, flag="--scale-up-window", group=AUTOSCALING, type=click.FloatRange(min=0),
                                     help="Seconds the load must stay above target before replicas are added.")
    scale_down_cooldown: float = setting(60.0, flag="--scale-down-cooldown", group=AUTOSCALING,
                                         type=click.FloatRange(min=0),
                                         help="Seconds below target, and since the last change, before one replica "
                                              "is removed.")
    ping_failures: int = 3  # /ping failures in a row before a ready replica leaves the route
    liveness_window: float = 30.0  # a once-ready replica failing every /ping this long is restarted
    smoke_test: bool = setting(True, flag="--no-smoke-test", group=WATCHER, invert=True,
                               help="Route on /ping alone, without posting the saved input example.")
    drain_seconds: float = 2.0
    backoff_initial: float = 5.0
    backoff_max: float = 300.0
    webhook_secret: str | None = setting(None, flag="--webhook-secret", group=WATCHER, envvar="MLOPS_WEBHOOK_SECRET",
                                         metavar="SECRET", help="Verify webhook signatures.")
    register_webhook: bool = setting(False, flag="--register-webhook", group=WATCHER,
                                     help="Create/update the registry webhook on the tracking server first.")
    webhook_url: str | None = setting(None, flag="--webhook-url", group=WATCHER, metavar="URL",
                                      help="URL the tracking server calls (default: this watcher's /webhooks/mlflow).")
    webhook_max_age: float = 300.0
    state_dir: Path = setting(flag="--state-dir", group=WATCHER, type=click.Path(path_type=Path),
                              default_factory=lambda: Path(".mlops") / "autoserve",
                              help="Deployment records, logs and the route table (routes.json).")
    leave_running: bool = setting(False, flag="--leave-running", group=WATCHER,
                                  help="On exit keep deployments and the gateway running for the next watcher.")
    docker: DockerSettings = field(default_factory=DockerSettings)
    targets_file: Path | None = setting(None, flag="--targets-file", group=WATCHER, metavar="FILE",
                                        type=click.Path(dir_okay=False, path_type=Path),
                                        help="Write every serving endpoint's /ping as Prometheus file_sd JSON here "
                                             "(blackbox probes).")
    environment: str = setting("dev", flag="--environment", group=WATCHER, envvar="MLOPS_ENVIRONMENT",
                               type=click.Choice(["dev", "stage", "prod"]),
                               help="In prod an alias is routed only to an approved, unblocked version; otherwise it "
                                    "keeps what it served (state 'blocked').")

    def __post_init__(self) -> None:
        low, high = self.port_range
        if low > high:
            raise ValidationError(f"--port-range {low}-{high}: LOW is above HIGH")
        if self.run_gateway and self.control_port == self.gateway_port:
            raise ValidationError(f"--watcher-port {self.control_port} is also a gateway port (--port); pick another")
        if not self.run_gateway and self.gateway_instances != 1:
            raise ValidationError("--gateway-instances is only used for the gateway the watcher starts, not with "
                                  "--no-gateway (run `mlops gateway --instances N` instead)")
        admin = range(self.gateway_admin_port, self.gateway_admin_port + self.gateway_instances)
        if self.run_gateway and self.control_port in admin:
            taken = f"--admin-port {admin[0]}" if len(admin) == 1 else \
                f"--admin-port {admin[0]}-{admin[-1]} with --gateway-instances {len(admin)}"
            raise ValidationError(f"--watcher-port {self.control_port} is also a gateway port ({taken}); "
                                  "pick another")
        if self.min_replicas and self.max_replicas and self.max_replicas < self.min_replicas:
            raise ValidationError(f"--max-replicas {self.max_replicas} is below --min-replicas {self.min_replicas}")
        if (self.max_replicas and self.max_replicas > (self.min_replicas or self.replicas)
                and not (self.scale_target_inflight or self.scale_target_rps)):
            raise ValidationError("autoscaling needs a target: --scale-target-inflight or --scale-target-rps above 0")
        if self.backoff_initial > self.backoff_max:
            raise ValidationError(f"backoff_initial {self.backoff_initial} is above backoff_max {self.backoff_max}")
        if self.runtime in ("docker", "swarm"):
            self._check_sizes()

    def _check_sizes(self) -> None:
        """Docker's memory notation, checked at start rather than at each container's."""
        from mlops_autoserve.watcher.runtime.swarm import size_bytes

        for name in ("memory", "reserve_memory"):
            size = getattr(self.docker, name)
            try:
                size_bytes(size)
            except (ValueError, IndexError):
                raise ValidationError(
                    f"{flag_of(DockerSettings, name)} {size!r} is not a size like 512m or 2g") from None

    def check_runtime_options(self) -> None:
        """Refuse Docker/Swarm options the runtime would ignore: a forgotten ``--runtime docker``
        must not serve processes without a word. Not in ``__post_init__``: code that builds a
        runtime itself (tests, benchmarks) passes DockerSettings whatever ``runtime`` says."""
        if self.runtime == "swarm":
            return
        default = DockerSettings()
        unused = [f.name for f in fields(DockerSettings) if getattr(self.docker, f.name) != getattr(default, f.name)
                  and (self.runtime == "process" or f.name in DockerSettings.SWARM_ONLY)]
        if unused:
            needs = "swarm" if self.runtime == "docker" else "docker or swarm"
            verb = "is" if len(unused) == 1 else "are"
            raise ValidationError(f"{', '.join(flag_of(DockerSettings, n) for n in unused)} {verb} only used with "
                                  f"--runtime {needs}, not --runtime {self.runtime}")

    def wants(self, model: str, alias: str) -> bool:
        return (not self.aliases or alias in self.aliases) and (not self.models or model in self.models)


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway process: where it listens and the limits that protect it."""

    state_dir: Path = setting(flag="--state-dir", group=GATEWAY, type=click.Path(path_type=Path),
                              default_factory=lambda: Path(".mlops") / "autoserve",  # reads routes.json here
                              help="Deployment records, logs and the route table (routes.json).")
    host: str = setting("127.0.0.1", flag="--host", group=GATEWAY, help="Address of the gateway's data port.")
    port: int = setting(8000, flag="--port", group=GATEWAY, type=PORT,
                        help="Gateway port: /serve/{model}/{alias}/invocations, /health.")
    admin_host: str = setting("127.0.0.1", flag="--admin-host", group=GATEWAY,
                              help="Address of the gateway's admin port (kept apart from --host: it shows the "
                                   "route table and load).")
    admin_port: int = setting(8001, flag="--admin-port", group=GATEWAY, type=PORT,
                              help="Gateway admin port: /endpoints, /inflight, /metrics, /health (with --instances "
                                   "N, instance i listens on this port + i).")
    admin_token: str | None = setting(None, flag="--admin-token-file", group=GATEWAY, metavar="FILE",
                                      type=click.Path(dir_okay=False, path_type=Path),
                                      parse=token_reader("--admin-token-file"),
                                      help="Require 'Authorization: Bearer <token>' on the admin port (all but "
                                           "/health); the token is this file's content.")
    request_timeout: float = setting(60.0, flag="--request-timeout", group=GATEWAY, type=click.FloatRange(min=0.1),
                                     help="Seconds a backend may take before the gateway answers 504.")
    # decided from Content-Length before reading
    max_body_mb: float = setting(64.0, flag="--max-body-mb", group=GATEWAY, type=click.FloatRange(min=0.001),
                                 help="Larger request bodies get 413 before they are read.")
    max_inflight: int = setting(256, flag="--max-inflight", group=GATEWAY, type=click.IntRange(min=1),
                                help="Requests in flight per route before 429 with Retry-After.")
    max_inflight_mb: float = setting(256.0, flag="--max-inflight-mb", group=GATEWAY, type=click.FloatRange(min=1),
                                     help="Request bodies held in memory at once, all routes together; past it "
                                          "503 with Retry-After.")
    max_response_mb: float = setting(64.0, flag="--max-response-mb", group=GATEWAY,
                                     type=click.FloatRange(min=0.001),
                                     help="A backend answer larger than this is not passed on: 502 (counted).")
    max_connections: int = setting(4096, flag="--max-connections", group=GATEWAY, type=click.IntRange(min=16),
                                   help="Client connections open at once; past it a new one gets a fast 503. "
                                        "Lowered at start to fit the open-file limit (raised to its hard limit).")
    client_body_timeout: float = setting(30.0, flag="--client-body-timeout", group=GATEWAY,
                                         type=click.FloatRange(min=0.1),
                                         help="Seconds a request body may take to arrive; then 408 and the "
                                              "connection is closed (a stalled upload never holds a slot).")
    v2_default_alias: str = setting("Production", flag="--v2-default-alias", group=GATEWAY, metavar="ALIAS",
                                    help="The alias a V2 (Open Inference Protocol) call without /versions/{v} "
                                         "goes to: /v2/models/{model}/infer.")
    header_timeout: float = 10.0  # a request head must arrive within this many seconds
    keepalive_timeout: float = 75.0  # idle client connections are closed after this many seconds
    instances: int = setting(1, flag="--instances", group=GATEWAY, type=click.IntRange(1, 64),
                             help="Gateway processes on --port (SO_REUSEPORT: the kernel spreads connections), "
                                  "under a supervisor that restarts a dead one within 1 s; instance i has admin "
                                  "port --admin-port + i.")
    reuse_port: bool = False  # SO_REUSEPORT on the data port: set for every instance of --instances
    eject_after: int = 3  # consecutive failures take a replica out of rotation
    readmit_interval: float = 1.0  # seconds between GET /ping of ejected replicas
    # Bearer token required on /serve when set. The option names a file (read here): a token on
    # the command line would show in ps.
    auth_token: str | None = setting(None, flag="--auth-token-file", group=GATEWAY, metavar="FILE",
                                     type=click.Path(dir_okay=False, path_type=Path), parse=read_token,
                                     help="Require 'Authorization: Bearer <token>' on /serve; the token is this "
                                          "file's content.")
    shadow_queue: int = 1000  # shadow copies waiting to be sent; beyond it they are dropped (counted)
    shadow_queue_mb: float = 64.0  # and the bytes they hold (request + answer)
    shadow_workers: int = 4  # shadow copies in flight at once
    payload_log_rate: float = setting(0.0, flag="--payload-log-rate", group=GATEWAY, type=click.FloatRange(0, 1),
                                      metavar="SHARE",
                                      help="Share of answered requests (body, answer, latency) written to the "
                                           "app-db's payload_log table, off the request path (0: off).")
    payload_log_db: str | None = setting(None, flag="--payload-log-db", group=GATEWAY, envvar="APP_DB_URL",
                                         metavar="URL",
                                         help="App-db for the payload log, a SQLAlchemy URL (given to the gateway "
                                              "process in its environment, never on its command line).")
    payload_log_retention_days: float = setting(7.0, flag="--payload-log-retention-days", group=GATEWAY,
                                                type=click.FloatRange(min=0, min_open=True),
                                                help="Payload-log rows older than this are deleted (checked hourly).")
    payload_log_buffer: int = 10_000  # rows waiting for the writer; beyond it they are dropped (counted)
    payload_log_max_body_bytes: int = 256 * 1024  # larger requests or answers are not logged (counted)
    payload_log_buffer_mb: float = 64.0  # bytes the waiting rows may hold; beyond it rows are dropped (counted)

    def __post_init__(self) -> None:
        if self.port == self.admin_port:
            raise ValidationError(f"--port and --admin-port must differ (both {self.port})")
        if self.max_inflight_mb < self.max_body_mb:
            raise ValidationError(f"--max-inflight-mb {self.max_inflight_mb:g} is below --max-body-mb "
                                  f"{self.max_body_mb:g}: a body between the two could never be taken")
        if self.payload_log_rate > 0 and not self.payload_log_db:
            raise ValidationError("--payload-log-rate needs the app-db: set --payload-log-db or APP_DB_URL")

    # Sizes are given in MB and used in bytes.
    max_body_bytes = in_bytes("max_body_mb")
    max_inflight_bytes = in_bytes("max_inflight_mb")
    max_response_bytes = in_bytes("max_response_mb")
    shadow_queue_bytes = in_bytes("shadow_queue_mb")
    payload_log_buffer_bytes = in_bytes("payload_log_buffer_mb")
