"""Run the watcher: reconcile loop in a thread, its control API on asyncio, clean shutdown.

The gateway is another process (:mod:`gateway_process`): started or reused here unless the
watcher runs alone (``--no-gateway``), and stopped on exit only when the deployments are
stopped too (not with ``--leave-running``). With ``--gateway-instances N`` that process is
the supervisor of N gateways: it restarts a dead instance, this watcher restarts it.

Audit events the reconcile loop records go through the toolkit's background writer while
the watcher runs: a hung or absent audit store must not stall every model, nor lose the
event (it waits in ``<state-dir>/audit-spool`` until the store answers).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal

from mlops_autoserve.gateway.listener import listen
from mlops_autoserve.gateway_process import GatewayProcess
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.control import ControlApi
from mlops_autoserve.watcher.environments import Environments
from mlops_autoserve.watcher.reconciler import Reconciler
from mlops_autoserve.watcher.runtime import create_runtime
from mlops_autoserve.watcher.statelock import StateLock
from mlops_toolkit import audit
from mlops_toolkit.errors import one_line
from mlops_toolkit.jsonlog import configure_json_logging

log = logging.getLogger("autoserve")
GATEWAY_CHECK_S = 0.25  # how often the watcher checks that its gateway still runs
AUDIT_FLUSH_S = 2.0  # on shutdown: what the store does not take by then stays in the spool


def run(settings: AutoserveSettings, gateway: GatewayProcess | None = None, lock: StateLock | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop every deployment (unless leave_running).
    ``lock``: the state dir's lock when the caller took it already (else taken here)."""
    lock = lock or StateLock(settings.state_dir).acquire()  # one watcher per state dir
    configure_json_logging(service="autoserve")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # A registry outage must cost one quick failed cycle, not minutes of client retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    metrics = AutoserveMetrics()
    try:
        runtime = create_runtime(settings)
        environments = Environments.for_runtime(settings, metrics, runtime)
        reconciler = Reconciler(settings, runtime, metrics, environments=environments)
        asyncio.run(_serve(settings, reconciler, metrics, gateway))
    finally:
        lock.release()


async def _serve(settings: AutoserveSettings, reconciler: Reconciler, metrics: AutoserveMetrics,
                 gateway: GatewayProcess | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # handlers first: a SIGTERM during start-up still shuts down cleanly
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control = await listen(ControlApi(settings, reconciler, metrics).app(), settings.control_host,
                           settings.control_port, "watcher", "--watcher-port")
    if gateway is not None:
        try:
            how = await loop.run_in_executor(None, gateway.ensure)
        except BaseException:
            await control.cleanup()
            raise
    log.info("autoserve started", extra={
        "gateway": f"http://{settings.gateway_host}:{settings.gateway_port}" if gateway else "external",
        "gateway_process": how if gateway is not None else None,
        "gateway_instances": settings.gateway_instances if gateway is not None else None,
        "gateway_admin_urls": list(settings.gateway_admin_urls),
        "watcher": f"http://{settings.control_host}:{settings.control_port}",
        "tracking_uri": settings.tracking_uri, "runtime": settings.runtime, "strategy": settings.strategy,
        "aliases": sorted(settings.aliases) or "all", "models": sorted(settings.models) or "all",
        "webhook_signed": bool(settings.webhook_secret),
    })
    _start_audit(settings, metrics)
    reconciler.start()
    supervisor = asyncio.create_task(_supervise(gateway, metrics)) if gateway is not None else None
    try:
        await stop.wait()
    finally:
        log.info("shutting down", extra={"leave_running": settings.leave_running})
        if supervisor is not None:
            supervisor.cancel()
        await control.cleanup()
        await loop.run_in_executor(None, reconciler.shutdown)
        await loop.run_in_executor(None, functools.partial(audit.stop_background, AUDIT_FLUSH_S))
        if gateway is not None and not settings.leave_running:
            await loop.run_in_executor(None, gateway.stop)
        log.info("autoserve stopped")


async def _supervise(gateway: GatewayProcess, metrics: AutoserveMetrics) -> None:
    """Start the gateway again when it dies: every request goes through it. Checked every
    GATEWAY_CHECK_S; a start that fails is tried again at the next check."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(GATEWAY_CHECK_S)
        if await loop.run_in_executor(None, gateway.alive):
            continue
        metrics.gateway_restarts.inc()
        try:
            await loop.run_in_executor(None, gateway.restart)
        except Exception as exc:  # noqa: BLE001 - logged; the next check tries again
            log.error("the gateway could not be started again", extra={"error": one_line(exc)})


def _start_audit(settings: AutoserveSettings, metrics: AutoserveMetrics) -> None:
    """The reconcile loop's audit events go through a background writer and its spool."""
    audit.start_background(settings.state_dir / "audit-spool",
                           on_result=lambda result: metrics.audit_events.labels(result).inc())
    metrics.audit_queued.set_function(lambda: audit.background_stats()["queued"])
    metrics.audit_spooled.set_function(lambda: audit.background_stats()["spooled"])
