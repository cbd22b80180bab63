"""``mlops autoserve`` (run the watcher) and ``mlops serve status`` (what is serving)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import click

from mlops_toolkit import config
from mlops_toolkit.cli.common import echo_json, echo_table, json_option, port_range_option, tracking_uri_option
from mlops_toolkit.errors import MlopsError


def _csv(ctx: click.Context, param: click.Parameter, value: str | None) -> frozenset[str]:
    return frozenset(v.strip() for v in (value or "").split(",") if v.strip())


@click.command()
@tracking_uri_option()
@click.option("--aliases", callback=_csv, metavar="A,B", help="Aliases to serve (default: all).")
@click.option("--models", callback=_csv, metavar="M,N", help="Only these registered models (default: all).")
@click.option("--poll-interval", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds between registry reads.")
@click.option("--strategy", type=click.Choice(["blue-green", "recreate"]), default="blue-green", show_default=True)
@click.option("--runtime", type=click.Choice(["process", "docker"]), default="process", show_default=True,
              help="Local processes, or Docker containers of --docker-image.")
@click.option("--docker-image", default="mlops-toolkit/serving:latest", show_default=True, metavar="IMAGE")
@click.option("--docker-network", default="host", show_default=True, metavar="NAME",
              help="'host', or a network where the gateway reaches containers by name.")
@click.option("--docker-publish", is_flag=True, help="Also publish each container's port on 127.0.0.1.")
@click.option("--container-tracking-uri", metavar="URI", help="Tracking URI as containers see it (default: --tracking-uri).")
@click.option("--instance", metavar="NAME", help="Owner label for containers (default: derived from --state-dir).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Gateway address.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Gateway port.")
@port_range_option("18100-18999")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Uvicorn workers per deployment.")
@click.option("--env-manager", type=click.Choice(["local", "virtualenv", "uv", "conda"]), default="local", show_default=True)
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True)
@click.option("--no-smoke-test", is_flag=True, help="Route on /ping alone, without posting the saved input example.")
@click.option("--webhook-secret", envvar="MLOPS_WEBHOOK_SECRET", metavar="SECRET", help="Verify webhook signatures ($MLOPS_WEBHOOK_SECRET).")
@click.option("--register-webhook", is_flag=True, help="Create/update the registry webhook on the tracking server first.")
@click.option("--webhook-url", metavar="URL", help="URL the tracking server calls (default: this gateway's /webhooks/mlflow).")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".mlops/autoserve"), show_default=True)
@click.option("--targets-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write every serving endpoint's /ping as Prometheus file_sd JSON here (blackbox probes).")
@click.option("--leave-running", is_flag=True, help="On exit keep deployments running for the next watcher to adopt.")
def autoserve(aliases, models, poll_interval, strategy, runtime, docker_image, docker_network, docker_publish,
              container_tracking_uri, instance, host, port, port_range, workers, env_manager, ready_timeout,
              no_smoke_test, webhook_secret, register_webhook, webhook_url, state_dir, targets_file, leave_running) -> None:
    """Serve every registry alias with `mlflow models serve` and follow alias moves."""
    from mlops_autoserve import service, webhook
    from mlops_autoserve.settings import AutoserveSettings
    from mlops_toolkit.connection import ensure_reachable

    if targets_file is not None:
        _check_writable(targets_file)
    tracking_uri = config.settings().tracking_uri
    ensure_reachable(tracking_uri)
    settings = AutoserveSettings(
        tracking_uri=tracking_uri, aliases=aliases, models=models, poll_interval=poll_interval,
        strategy=strategy, runtime=runtime, gateway_host=host, gateway_port=port, port_range=port_range,
        workers=workers, env_manager=env_manager, ready_timeout=ready_timeout, smoke_test=not no_smoke_test,
        webhook_secret=webhook_secret or None, state_dir=state_dir, leave_running=leave_running,
        docker_image=docker_image, docker_network=docker_network, docker_publish=docker_publish,
        container_tracking_uri=container_tracking_uri, instance=instance, targets_file=targets_file,
    )
    if register_webhook:
        url = webhook_url or f"http://{host}:{port}/webhooks/mlflow"
        try:
            webhook_id = webhook.register(tracking_uri, url, settings.webhook_secret)
        except Exception as exc:
            raise MlopsError(f"could not register the webhook at {tracking_uri}: {exc}") from None
        click.echo(f"webhook {webhook_id} -> {url}", err=True)
    service.run(settings)


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
@click.option("--gateway", envvar="MLOPS_GATEWAY_URL", default="http://127.0.0.1:8000", show_default=True,
              metavar="URL", help="Autoserve gateway ($MLOPS_GATEWAY_URL).")
@json_option
def status(gateway: str, as_json: bool) -> None:
    """A table of every served (model, alias): version, state, direct URL, last error."""
    url = gateway.rstrip("/") + "/endpoints"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            endpoints = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise MlopsError(f"{url} answered HTTP {exc.code}: is it an autoserve gateway?") from None
    except (OSError, ValueError) as exc:
        raise MlopsError(f"cannot read {url}: {getattr(exc, 'reason', exc)}") from None
    if as_json:
        echo_json(endpoints)
        return
    echo_table(
        ["MODEL", "ALIAS", "VERSION", "STATE", "URL", "SINCE", "LAST ERROR"],
        [(e["model"], e["alias"], _v(e["version"]), e["state"] + _wanted(e), e["url"] or "-", e["since"],
          e["last_error"] or "") for e in endpoints],
        "nothing is being served",
    )


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def _wanted(endpoint: dict) -> str:
    if endpoint["version"] != endpoint["desired_version"]:
        return f" (-> v{endpoint['desired_version']})"
    return ""


__all__ = ["autoserve", "serve"]
