"""Run the watcher: reconcile loop in a thread, gateway on the asyncio loop, clean shutdown."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal

from aiohttp import web

from mlops_autoserve.gateway import Gateway
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.reconciler import Reconciler
from mlops_autoserve.runtime import create_runtime
from mlops_autoserve.settings import AutoserveSettings
from mlops_toolkit.errors import MlopsError, ValidationError
from mlops_toolkit.jsonlog import configure_json_logging

log = logging.getLogger("autoserve")


def run(settings: AutoserveSettings) -> None:
    """Serve until SIGTERM or SIGINT, then stop every deployment (unless leave_running)."""
    configure_json_logging(service="autoserve")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # A registry outage must cost one quick failed cycle, not minutes of client retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    metrics = AutoserveMetrics()
    reconciler = Reconciler(settings, create_runtime(settings), metrics)
    gateway = Gateway(settings, reconciler, metrics)
    asyncio.run(_serve(settings, reconciler, gateway))


async def _serve(settings: AutoserveSettings, reconciler: Reconciler, gateway: Gateway) -> None:
    runner = web.AppRunner(gateway.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.gateway_host, settings.gateway_port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise ValidationError(
                f"gateway port {settings.gateway_host}:{settings.gateway_port} is already in use; "
                "pick another with --port"
            ) from None
        raise MlopsError(f"cannot listen on {settings.gateway_host}:{settings.gateway_port}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("autoserve started", extra={
        "gateway": f"http://{settings.gateway_host}:{settings.gateway_port}", "tracking_uri": settings.tracking_uri,
        "runtime": settings.runtime, "strategy": settings.strategy,
        "aliases": sorted(settings.aliases) or "all", "models": sorted(settings.models) or "all",
        "webhook_signed": bool(settings.webhook_secret),
    })
    reconciler.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down", extra={"leave_running": settings.leave_running})
        await runner.cleanup()
        await loop.run_in_executor(None, reconciler.shutdown)
        log.info("autoserve stopped")
