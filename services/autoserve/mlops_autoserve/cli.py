"""``mlops autoserve`` (the watcher, and its gateway), ``mlops gateway`` (the gateway alone)
and ``mlops serve status`` (what is serving)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mlops_autoserve.settings import AutoserveSettings, DockerSettings, GatewaySettings
from mlops_toolkit import config, http
from mlops_toolkit.cli.common import (
    echo_json,
    echo_table,
    json_option,
    port_range_option,
    tracking_uri_option,
)
from mlops_toolkit.errors import MlopsError, TrackingUnavailableError, ValidationError

_G = GatewaySettings()  # defaults live in the settings; the options show them
_A = AutoserveSettings(tracking_uri="")
_D = DockerSettings()


def _csv(ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[str]:
    return frozenset(v.strip() for v in (value or "").split(",") if v.strip())


def _gateway_options(fn):
    """The gateway's listeners and limits: the same options on `mlops gateway` and `mlops autoserve`."""
    options = [
        click.option("--host", default=_G.host, show_default=True, help="Address of the gateway (and its admin port)."),
        click.option("--port", type=click.IntRange(1, 65535), default=_G.port, show_default=True,
                     help="Gateway port: /serve/{model}/{alias}/invocations, /health."),
        click.option("--admin-port", type=click.IntRange(1, 65535), default=_G.admin_port, show_default=True,
                     help="Gateway admin port: /endpoints, /inflight, /metrics, /health."),
        click.option("--request-timeout", type=click.FloatRange(min=0.1), default=_G.request_timeout, show_default=True,
                     help="Seconds a backend may take before the gateway answers 504."),
        click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=_G.max_body_mb, show_default=True,
                     help="Larger request bodies get 413 before they are read."),
        click.option("--max-inflight", type=click.IntRange(min=1), default=_G.max_inflight, show_default=True,
                     help="Requests in flight per route before 429 with Retry-After."),
        click.option("--auth-token-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                     help="Require 'Authorization: Bearer <token>' on /serve; the token is this file's content."),
        click.option("--payload-log-rate", type=click.FloatRange(0, 1), default=_G.payload_log_rate, show_default=True,
                     metavar="SHARE", help="Share of answered requests (body, answer, latency) written to the "
                     "app-db's payload_log table, off the request path (0: off)."),
        click.option("--payload-log-db", envvar="APP_DB_URL", metavar="URL",
                     help="App-db for the payload log, a SQLAlchemy URL ($APP_DB_URL; given to the gateway "
                     "process in its environment, never on its command line)."),
        click.option("--payload-log-retention-days", type=click.FloatRange(min=0, min_open=True),
                     default=_G.payload_log_retention_days, show_default=True,
                     help="Payload-log rows older than this are deleted (checked hourly)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _gateway_settings(state_dir: Path, host: str, port: int, admin_port: int, request_timeout: float,
                      max_body_mb: float, max_inflight: int, auth_token_file: Path | None, payload_log_rate: float,
                      payload_log_db: str | None, payload_log_retention_days: float) -> GatewaySettings:
    """Settings from the options of ``_gateway_options`` (passed by name)."""
    if port == admin_port:
        raise ValidationError(f"--port and --admin-port must differ (both {port})")
    if payload_log_rate > 0 and not payload_log_db:
        raise ValidationError("--payload-log-rate needs the app-db: set --payload-log-db or APP_DB_URL")
    return GatewaySettings(state_dir=state_dir, host=host, port=port, admin_host=host, admin_port=admin_port,
                           request_timeout=request_timeout, max_body_mb=max_body_mb, max_inflight=max_inflight,
                           auth_token=_read_token(auth_token_file) if auth_token_file else None,
                           payload_log_rate=payload_log_rate, payload_log_db=payload_log_db or None,
                           payload_log_retention_days=payload_log_retention_days)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ValidationError(f"cannot read --auth-token-file {path}: {exc.strerror or exc}") from None
    if not token or any(c.isspace() for c in token):
        raise ValidationError(f"--auth-token-file {path} must hold one token without spaces")
    return token


_state_dir_option = click.option("--state-dir", type=click.Path(path_type=Path), default=_A.state_dir,
                                 show_default=True, help="Deployment records, logs and the route table (routes.json).")


@click.command()
@_state_dir_option
@_gateway_options
def gateway(state_dir, **options) -> None:
    """Serve the route table the watcher publishes in STATE_DIR, on its own (keeps serving without a watcher)."""
    from mlops_autoserve import gateway as gateway_module

    gateway_module.run(_gateway_settings(state_dir, **options))


@click.command()
@tracking_uri_option()
@click.option("--aliases", callback=_csv, metavar="A,B", help="Aliases to serve (default: all).")
@click.option("--models", callback=_csv, metavar="M,N", help="Only these registered models (default: all).")
@click.option("--poll-interval", type=click.FloatRange(min=0.1), default=_A.poll_interval, show_default=True, help="Seconds between registry reads.")
@click.option("--strategy", type=click.Choice(["blue-green", "recreate"]), default=_A.strategy, show_default=True)
@click.option("--runtime", type=click.Choice(["process", "docker", "swarm"]), default=_A.runtime, show_default=True,
              help="Local processes, Docker containers of --docker-image, or one Docker Swarm service per version "
                   "(its replicas Swarm's tasks; the engine must be a swarm manager).")
@click.option("--docker-image", default=_D.image, show_default=True, metavar="IMAGE")
@click.option("--docker-network", default=_D.network, show_default=True, metavar="NAME",
              help="'host', or a network where the gateway reaches containers by name.")
@click.option("--docker-publish", is_flag=True,
              help="Also publish each container's port on 127.0.0.1 (Swarm: each task's port on its node, every "
                   "address; the gateway calls the tasks there).")
@click.option("--container-tracking-uri", metavar="URI", help="Tracking URI as containers see it (default: --tracking-uri).")
@click.option("--instance", metavar="NAME", help="Owner label for containers (default: derived from --state-dir).")
@click.option("--docker-memory", default=_D.memory, show_default=True, metavar="SIZE",
              help="Memory limit of each serving container (e.g. 512m, 2g).")
@click.option("--docker-cpus", type=click.FloatRange(min=0.01), default=_D.cpus, show_default=True,
              help="CPU limit of each serving container.")
@click.option("--swarm-reserve-memory", default=_D.reserve_memory, show_default=True, metavar="SIZE",
              help="Memory Swarm reserves for each task (a node without it free gets no task).")
@click.option("--swarm-reserve-cpus", type=click.FloatRange(min=0), default=_D.reserve_cpus, show_default=True,
              help="CPUs Swarm reserves for each task.")
@click.option("--swarm-constraint", "swarm_constraints", multiple=True, metavar="EXPR",
              help="Placement constraint of every serving task, e.g. node.labels.serving==true (repeatable).")
@_gateway_options
@click.option("--watcher-port", type=click.IntRange(1, 65535), default=_A.control_port, show_default=True,
              help="The watcher's own /health, /metrics and /webhooks/mlflow (on --host).")
@click.option("--no-gateway", is_flag=True, help="Run the watcher alone; `mlops gateway` serves its route table.")
@click.option("--gateway-admin-url", metavar="URL",
              help="Gateway admin URL, asked for in-flight requests before a version stops (default: the one started here).")
@port_range_option("{}-{}".format(*_A.port_range))
@click.option("--workers", type=click.IntRange(min=1), default=_A.workers, show_default=True, help="Uvicorn workers per deployment.")
@click.option("--replicas", type=click.IntRange(1, 32), default=_A.replicas, show_default=True,
              help="Replicas per served version (a model's tag mlops.autoserve.replicas overrides).")
@click.option("--min-ready", type=click.IntRange(min=1), metavar="N",
              help="Replicas that must answer before a route moves to a new version (default: all).")
@click.option("--min-replicas", type=click.IntRange(1, 32), metavar="N",
              help="Autoscaling floor per served version (default: --replicas; tag mlops.autoserve.min_replicas overrides).")
@click.option("--max-replicas", type=click.IntRange(1, 32), metavar="N",
              help="Autoscaling ceiling per served version (default: the floor, i.e. no autoscaling; tag "
                   "mlops.autoserve.max_replicas overrides).")
@click.option("--scale-target-inflight", type=click.FloatRange(min=0), default=_A.scale_target_inflight,
              show_default=True, help="Requests in flight per replica the autoscaler aims at (0: not used).")
@click.option("--scale-target-rps", type=click.FloatRange(min=0), default=_A.scale_target_rps, show_default=True,
              help="Requests per second per replica the autoscaler aims at (0: not used).")
@click.option("--scale-up-window", type=click.FloatRange(min=0), default=_A.scale_up_window, show_default=True,
              help="Seconds the load must stay above target before replicas are added.")
@click.option("--scale-down-cooldown", type=click.FloatRange(min=0), default=_A.scale_down_cooldown,
              show_default=True, help="Seconds below target, and since the last change, before one replica is removed.")
@click.option("--env-manager", type=click.Choice(["auto", "local", "uv"]), default=_A.env_manager, show_default=True,
              help="auto: serve from this environment (the image's, with Docker) when it satisfies the version's "
                   "requirements.txt, else from one built from them with uv, once, and cached; local: always "
                   "this environment; uv: always a built one.")
@click.option("--env-cache", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Built environments (process runtime) and their use records (default: STATE_DIR/envs).")
@click.option("--env-build-timeout", type=click.FloatRange(min=1), default=_A.env_build_timeout, show_default=True,
              help="Seconds one environment build may take before the deploy fails.")
@click.option("--env-max-idle-days", type=click.FloatRange(min=0), default=_A.env_max_idle_days, show_default=True,
              help="Built environments no deployment used this long are removed.")
@click.option("--env-max-gb", type=click.FloatRange(min=0), default=_A.env_max_gb, show_default=True,
              help="Past this size the least recently used environments not in use are removed.")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=_A.ready_timeout, show_default=True)
@click.option("--no-smoke-test", is_flag=True, help="Route on /ping alone, without posting the saved input example.")
@click.option("--webhook-secret", envvar="MLOPS_WEBHOOK_SECRET", metavar="SECRET", help="Verify webhook signatures ($MLOPS_WEBHOOK_SECRET).")
@click.option("--register-webhook", is_flag=True, help="Create/update the registry webhook on the tracking server first.")
@click.option("--webhook-url", metavar="URL", help="URL the tracking server calls (default: this watcher's /webhooks/mlflow).")
@_state_dir_option
@click.option("--targets-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write every serving endpoint's /ping as Prometheus file_sd JSON here (blackbox probes).")
@click.option("--leave-running", is_flag=True, help="On exit keep deployments and the gateway running for the next watcher.")
@click.option("--environment", envvar="MLOPS_ENVIRONMENT", type=click.Choice(["dev", "stage", "prod"]),
              default=_A.environment, show_default=True,
              help="$MLOPS_ENVIRONMENT. In prod an alias is routed only to an approved, unblocked version; "
                   "otherwise it keeps what it served (state 'blocked').")
def autoserve(aliases, models, poll_interval, strategy, runtime, docker_image, docker_network, docker_publish,
              container_tracking_uri, instance, docker_memory, docker_cpus, swarm_reserve_memory,
              swarm_reserve_cpus, swarm_constraints, watcher_port, no_gateway, gateway_admin_url, port_range, workers,
              replicas, min_ready, min_replicas, max_replicas, scale_target_inflight, scale_target_rps,
              scale_up_window, scale_down_cooldown, env_manager, env_cache, env_build_timeout, env_max_idle_days, env_max_gb,
              ready_timeout, no_smoke_test, webhook_secret, register_webhook,
              webhook_url, state_dir, targets_file, leave_running, environment, **gateway_options) -> None:
    """Serve every registry alias with `mlflow models serve` and follow alias moves.

    Starts (or reuses) the gateway as a process of its own, which keeps serving while the
    watcher restarts; --no-gateway runs the watcher alone.
    """
    from mlops_autoserve.watcher import service, webhook
    from mlops_autoserve.gateway_process import GatewayProcess
    from mlops_autoserve.watcher.statelock import StateLock
    from mlops_toolkit.connection import ensure_reachable

    if targets_file is not None:
        _check_writable(targets_file)
    host, port = gateway_options["host"], gateway_options["port"]
    if watcher_port in (port, gateway_options["admin_port"]) and not no_gateway:
        raise ValidationError(f"--watcher-port {watcher_port} is also a gateway port; pick another")
    if min_replicas and max_replicas and max_replicas < min_replicas:
        raise ValidationError(f"--max-replicas {max_replicas} is below --min-replicas {min_replicas}")
    if max_replicas and max_replicas > (min_replicas or replicas) and not (scale_target_inflight or scale_target_rps):
        raise ValidationError("autoscaling needs a target: --scale-target-inflight or --scale-target-rps above 0")
    if runtime == "swarm":
        _check_sizes(("--docker-memory", docker_memory), ("--swarm-reserve-memory", swarm_reserve_memory))
    gateway_settings = _gateway_settings(state_dir, **gateway_options)
    lock = StateLock(state_dir).acquire()  # first: a second watcher on this state dir stops here, in one line
    gateway_process = None if no_gateway else GatewayProcess(gateway_settings, gateway_options["auth_token_file"])
    tracking_uri = config.settings().tracking_uri
    try:
        ensure_reachable(tracking_uri)
    except TrackingUnavailableError as exc:
        if exc.answered:
            raise  # something answered, and it is not MLflow: a wrong URI, not an outage
        click.echo(f"warning: {exc}; serving the last published routes and retrying", err=True)
    settings = AutoserveSettings(
        tracking_uri=tracking_uri, aliases=aliases, models=models, poll_interval=poll_interval,
        strategy=strategy, runtime=runtime, gateway_host=host, gateway_port=port,
        gateway_admin_url=gateway_admin_url or (gateway_process.admin_url if gateway_process else None),
        control_host=host, control_port=watcher_port, port_range=port_range,
        workers=workers, replicas=replicas, min_ready=min_ready, min_replicas=min_replicas, max_replicas=max_replicas,
        scale_target_inflight=scale_target_inflight, scale_target_rps=scale_target_rps,
        scale_up_window=scale_up_window, scale_down_cooldown=scale_down_cooldown, env_manager=env_manager,
        env_cache=env_cache,
        env_build_timeout=env_build_timeout, env_max_idle_days=env_max_idle_days, env_max_gb=env_max_gb,
        ready_timeout=ready_timeout, smoke_test=not no_smoke_test,
        webhook_secret=webhook_secret or None, state_dir=state_dir, leave_running=leave_running,
        docker=DockerSettings(image=docker_image, network=docker_network, publish=docker_publish,
                              container_tracking_uri=container_tracking_uri, instance=instance,
                              memory=docker_memory, cpus=docker_cpus, reserve_memory=swarm_reserve_memory,
                              reserve_cpus=swarm_reserve_cpus, constraints=tuple(swarm_constraints)),
        targets_file=targets_file, environment=environment,
    )
    if register_webhook:
        url = webhook_url or f"http://{host}:{watcher_port}/webhooks/mlflow"
        try:
            webhook_id = webhook.register(tracking_uri, url, settings.webhook_secret)
        except Exception as exc:
            raise MlopsError(f"could not register the webhook at {tracking_uri}: {exc}") from None
        click.echo(f"webhook {webhook_id} -> {url}", err=True)
    service.run(settings, gateway_process, lock)


def _check_sizes(*flags: tuple[str, str]) -> None:
    from mlops_autoserve.watcher.runtime.swarm import size_bytes
    from mlops_toolkit.errors import ValidationError

    for flag, size in flags:
        try:
            size_bytes(size)
        except (ValueError, IndexError):
            raise ValidationError(f"{flag} {size!r} is not a size like 512m or 2g") from None


def _check_writable(path: Path) -> None:
    """Fail at start, not with a warning per route change, when the targets file cannot be written."""
    from mlops_toolkit.errors import ValidationError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValidationError(f"cannot write --targets-file {path}: {exc.strerror or exc}") from None


@click.group()
def serve() -> None:
    """Inspect what autoserve is serving."""


@serve.command("status")
@click.option("--gateway-admin", "gateway", envvar="MLOPS_GATEWAY_ADMIN_URL", default="http://127.0.0.1:8001",
              show_default=True, metavar="URL", help="Gateway admin URL ($MLOPS_GATEWAY_ADMIN_URL).")
@json_option
def status(gateway: str, as_json: bool) -> None:
    """A table of every served (model, alias): version, state, ready/routed replicas, direct URL, last error."""
    endpoints = _read_json(
        gateway.rstrip("/") + "/endpoints", 5, lambda data: isinstance(data, list),
        "is `mlops autoserve` (or `mlops gateway`) running? "
        "Point --gateway-admin (or $MLOPS_GATEWAY_ADMIN_URL) at the gateway's admin port",
        "a list of endpoints: is it an autoserve gateway's admin port?")
    if as_json:
        echo_json(endpoints)
        return
    echo_table(
        ["MODEL", "ALIAS", "VERSION", "STATE", "REPLICAS", "URL", "SINCE", "LAST ERROR"],
        [(e["model"], e["alias"], _v(e["version"]), e["state"] + _wanted(e) + _building(e),
          f"{e.get('ready_replicas', 0)}/{len(e.get('replicas', []))}" + _scale(e), e["url"] or "-", e["since"],
          e["last_error"] or "") for e in endpoints],
        "nothing is being served",
    )


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _read_json(url: str, timeout: float, accept, running_hint: str, expected: str):
    """GET a service's JSON page; one-line errors when nothing answers or something else does."""
    try:
        response = http.get(url, timeout=timeout)
        data = response.json() if response.status == 200 else None
    except http.Unreachable as exc:
        raise MlopsError(f"cannot read {url}: {exc.reason}; {running_hint}") from None
    except ValueError:
        data = None
    if not accept(data):
        raise MlopsError(f"{url} answered HTTP {response.status} without {expected}")
    return data


def _scale(endpoint: dict) -> str:
    """`` wants 3 (1-4), up 1 -> 3 12 s ago``: an autoscaled route's count and last decision."""
    scale = endpoint.get("scale")
    if not scale:
        return ""
    last = scale.get("last")
    when = f" {scale['seconds_ago']:.0f} s ago" if scale.get("seconds_ago") is not None else ""
    return f" wants {scale['wanted']} ({scale['min']}-{scale['max']})" + (f", {last.split(':')[0]}{when}" if last else "")


def _building(endpoint: dict) -> str:
    build = endpoint.get("building")
    if not build:
        return ""
    progress = f": {build['progress']}" if build.get("progress") else ""
    return f" [v{build['version']} environment {build['env'][:8]} building {build['seconds']:.0f} s{progress}]"


@serve.command("envs")
@click.option("--watcher", envvar="MLOPS_WATCHER_URL", default="http://127.0.0.1:8002", show_default=True,
              metavar="URL", help="The watcher's URL ($MLOPS_WATCHER_URL; its --watcher-port).")
@json_option
def envs(watcher: str, as_json: bool) -> None:
    """Environments autoserve built for models the serving environment does not satisfy: size, last use, in use."""
    data = _read_json(
        watcher.rstrip("/") + "/envs", 30,
        lambda data: isinstance(data, dict) and isinstance(data.get("environments"), list),
        "is `mlops autoserve` running? Point --watcher (or $MLOPS_WATCHER_URL) at its --watcher-port",
        "environments: is it an autoserve watcher (--watcher-port)?")
    if as_json:
        echo_json(data)
        return
    echo_table(
        ["ENV", "SIZE", "BUILT IN", "LAST USED", "IN USE", "WHERE", "REQUIREMENTS"],
        [(e["key"], _size(e["size_bytes"]), f"{e['build_seconds']:.1f} s", _ago(e["last_used"]),
          "yes" if e["in_use"] else "no", e["location"], _requirements(e["requirements"]))
         for e in sorted(data["environments"], key=lambda e: -e["last_used"])],
        f"no environment built (--env-manager {data.get('env_manager', '?')}): every version served "
        "from the serving environment",
    )


def _size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def _ago(when: float) -> str:
    seconds = max(0, time.time() - when)
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _requirements(lines: list[str]) -> str:
    others = [line for line in lines if not line.startswith("mlflow")]  # mlflow is in every one
    more = len(others) - 3
    return ", ".join(others[:3]) + (f" (+{more})" if more > 0 else "")


def _wanted(endpoint: dict) -> str:
    if endpoint["version"] != endpoint["desired_version"]:
        return f" (-> v{endpoint['desired_version']})"
    return ""


__all__ = ["autoserve", "gateway", "serve"]
