"""``mlops autoserve`` (the watcher, and its gateway), ``mlops gateway`` (the gateway alone)
and ``mlops serve status`` (what is serving).

The options of ``autoserve`` and ``gateway`` are generated from the settings' declarations
(settings.py, each with its env var and its group in --help); here each command says which
settings it takes, and what it starts once they passed every check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from mlops_autoserve.options import declared, settings_command, values
from mlops_autoserve.settings import AutoserveSettings, DockerSettings, GatewaySettings
from mlops_toolkit import config, http
from mlops_toolkit.cli.common import (
    echo_json,
    echo_table,
    json_option,
    tracking_uri_option,
)
from mlops_toolkit.errors import MlopsError, TrackingUnavailableError

# `mlops autoserve` has one --state-dir, the watcher's: its gateway reads the route table there;
# and --gateway-instances, not --instances (which would read as the watcher's).
AUTOSERVE_OPTIONS = [*declared(AutoserveSettings), *declared(GatewaySettings, skip={"state_dir", "instances"}),
                     *declared(DockerSettings)]
GATEWAY_OPTIONS = declared(GatewaySettings)


def gateway_settings(params: dict[str, Any], **given: Any) -> GatewaySettings:
    """The gateway's settings from a command's options (``given``: those it does not take)."""
    return GatewaySettings(**values(GatewaySettings, params, skip=given), **given)


def autoserve_settings(params: dict[str, Any]) -> tuple[AutoserveSettings, GatewaySettings]:
    """The watcher's and its gateway's settings from the options of ``mlops autoserve``,
    every check passed: nothing has started yet when one fails."""
    from mlops_autoserve.gateway.instances import check_ports
    from mlops_autoserve.gateway_process import GatewayProcess

    watcher = values(AutoserveSettings, params, skip={"tracking_uri"})  # --tracking-uri configures every command
    gateway_ = gateway_settings(params, state_dir=watcher["state_dir"], instances=watcher["gateway_instances"])
    watcher["control_port"] = _watcher_port(watcher["control_port"], gateway_)
    if watcher["run_gateway"]:
        check_ports(gateway_, "--gateway-instances")
        if not watcher["gateway_admin_urls"]:
            watcher["gateway_admin_urls"] = GatewayProcess(gateway_).admin_urls  # the ones started here
    settings = AutoserveSettings(
        tracking_uri=config.settings().tracking_uri, **watcher, docker=DockerSettings(**values(DockerSettings, params)),
        gateway_host=gateway_.host, gateway_port=gateway_.port, gateway_admin_port=gateway_.admin_port,
        gateway_admin_token=gateway_.admin_token, control_host=gateway_.host,
    )
    settings.check_runtime_options()
    return settings, gateway_


def _watcher_port(port: int, gateway_: GatewaySettings) -> int:
    """The watcher's port: a default one that falls among the gateway instances' admin ports
    (--gateway-instances 2: 8001-8002) moves to the first port after them; one the user
    chose stays, and the settings' check names the clash."""
    ctx = click.get_current_context(silent=True)
    chosen = ctx is None or ctx.get_parameter_source("watcher_port") not in (click.core.ParameterSource.DEFAULT, None)
    admin = range(gateway_.admin_port, gateway_.admin_port + gateway_.instances)
    if chosen or port not in admin:
        return port
    moved = admin[-1] + 1
    return moved + 1 if moved == gateway_.port else moved


@settings_command(GATEWAY_OPTIONS)
def gateway(**params: Any) -> None:
    """Serve the route table the watcher publishes in STATE_DIR, on its own (keeps serving without a watcher).

    With --instances N, N gateway processes share --port and a supervisor restarts any that dies."""
    from mlops_autoserve.gateway import instances, server

    settings = gateway_settings(params)
    if settings.instances == 1:
        server.run(settings)
        return
    instances.check_ports(settings)
    instances.run(settings)


@settings_command(AUTOSERVE_OPTIONS, shared={"tracking_uri": tracking_uri_option()})
def autoserve(**params: Any) -> None:
    """Serve every registry alias with `mlflow models serve` and follow alias moves.

    Starts (or reuses) the gateway as a process of its own, which keeps serving while the
    watcher restarts; --no-gateway runs the watcher alone. Each option can also be set by
    the environment variable named with it; the option wins.
    """
    from mlops_autoserve.gateway_process import GatewayProcess
    from mlops_autoserve.watcher import service, webhook
    from mlops_autoserve.watcher.statelock import StateLock
    from mlops_toolkit.connection import ensure_reachable

    settings, gateway_settings_ = autoserve_settings(params)
    if settings.targets_file is not None:
        _check_writable(settings.targets_file)
    lock = StateLock(settings.state_dir).acquire()  # first: a second watcher on this state dir stops here, in one line
    # The token file's path, not the token: the gateway reads it itself (a token on its command line would show in ps).
    gateway_process = GatewayProcess(gateway_settings_, params["auth_token_file"],
                                     params["admin_token_file"]) if settings.run_gateway else None
    try:
        ensure_reachable(settings.tracking_uri)
    except TrackingUnavailableError as exc:
        if exc.answered:
            raise  # something answered, and it is not MLflow: a wrong URI, not an outage
        click.echo(f"warning: {exc}; serving the last published routes and retrying", err=True)
    if settings.register_webhook:
        url = settings.webhook_url or f"http://{settings.control_host}:{settings.control_port}/webhooks/mlflow"
        try:
            webhook_id = webhook.register(settings.tracking_uri, url, settings.webhook_secret)
        except Exception as exc:
            raise MlopsError(f"could not register the webhook at {settings.tracking_uri}: {exc}") from None
        click.echo(f"webhook {webhook_id} -> {url}", err=True)
    service.run(settings, gateway_process, lock)


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
@click.option("--admin-token-file", envvar="MLOPS_GATEWAY_ADMIN_TOKEN_FILE", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The gateway's admin token, for a gateway started with --admin-token-file "
                   "($MLOPS_GATEWAY_ADMIN_TOKEN_FILE).")
@json_option
def status(gateway: str, admin_token_file: Path | None, as_json: bool) -> None:
    """A table of every served (model, alias): version, state, ready/routed replicas, direct URL, last error."""
    from mlops_autoserve.settings import token_reader

    token = token_reader("--admin-token-file")(admin_token_file) if admin_token_file else None
    endpoints = _read_json(
        gateway.rstrip("/") + "/endpoints", 5, lambda data: isinstance(data, list),
        "is `mlops autoserve` (or `mlops gateway`) running? "
        "Point --gateway-admin (or $MLOPS_GATEWAY_ADMIN_URL) at the gateway's admin port",
        "a list of endpoints: is it an autoserve gateway's admin port?",
        headers={"Authorization": f"Bearer {token}"} if token else None)
    if as_json:
        echo_json(endpoints)
        return
    echo_table(
        ["MODEL", "ALIAS", "VERSION", "STATE", "REPLICAS", "URL", "SINCE", "LAST ERROR"],
        [(e["model"], e["alias"], _v(e["version"]), e["state"] + _wanted(e) + _building(e),
          f"{e.get('ready_replicas', 0)}/{len(e.get('replicas', []))}" + _scale(e), e["url"] or "-", e["since"],
          _errors(e)) for e in endpoints],
        "nothing is being served",
    )


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _read_json(url: str, timeout: float, accept, running_hint: str, expected: str,
               headers: dict[str, str] | None = None):
    """GET a service's JSON page; one-line errors when nothing answers or something else does."""
    try:
        response = http.get(url, timeout=timeout, headers=headers)
        data = response.json() if response.status == 200 else None
    except http.Unreachable as exc:
        raise MlopsError(f"cannot read {url}: {exc.reason}; {running_hint}") from None
    except ValueError:
        data = None
    if response.status == 401:
        given = "the token of --admin-token-file was refused" if headers else \
            "the gateway's admin port needs its token: pass --admin-token-file (or $MLOPS_GATEWAY_ADMIN_TOKEN_FILE)"
        raise MlopsError(f"{url} answered HTTP 401: {given}")
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
        [(e["key"], _size(e["size_bytes"]), _built_in(e), _ago(e["last_used"]),
          "yes" if e["in_use"] else "no", e["location"], _requirements(e["requirements"]))
         for e in sorted(data["environments"], key=lambda e: -e["last_used"])],
        f"no environment built (--env-manager {data.get('env_manager', '?')}): every version served "
        "from the serving environment",
    )


def _built_in(env: dict) -> str:
    """The download cache is not built: it fills as environments are."""
    return "-" if env.get("kind") == "download-cache" else f"{env['build_seconds']:.1f} s"


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


def _errors(endpoint: dict) -> str:
    """The route's last error, then the model's inputs the watcher ignores (a bad tag)."""
    problems = [p for p in endpoint.get("problems") or () if isinstance(p, str)]
    shown = [endpoint["last_error"]] if endpoint.get("last_error") else []
    shown += [f"ignored {p}" for p in problems]
    return "; ".join(shown)


def _wanted(endpoint: dict) -> str:
    if endpoint["version"] != endpoint["desired_version"]:
        return f" (-> v{endpoint['desired_version']})"
    return ""


__all__ = ["autoserve", "gateway", "serve"]
