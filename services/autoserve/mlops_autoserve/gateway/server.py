"""One gateway process: its two listeners, the file-descriptor limit, the signals it stops on,
and its registration in the state dir.

Registration: every gateway process writes ``<state_dir>/gateways/<pid>.json`` (its admin
URL, pid, data port, start time) and touches it every ``HEARTBEAT_S``; a clean stop removes
it. The watcher reads these records to find every instance (:mod:`watcher.gateways`): a
record untouched for ``STALE_S`` belongs to a process that died and is ignored (and removed
by the watcher). A state dir the gateway may not write (mounted read-only) costs a warning,
not the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import time
from pathlib import Path

from mlops_autoserve.gateway.app import Gateway
from mlops_autoserve.gateway.listener import ListenLimits, guards_for, listen
from mlops_autoserve.settings import GatewaySettings

log = logging.getLogger("autoserve.gateway")

FDS_PER_CONNECTION = 2  # the caller's socket and, while it is proxied, one to a backend
FDS_SPARE = 256  # log files, the route table, the payload log's database, admin callers
GATEWAYS_DIR = "gateways"  # <state_dir>/gateways/<pid>.json: one record per running gateway process
HEARTBEAT_S = 3.0  # how often a gateway touches its record
STALE_S = 15.0  # a record untouched this long is a dead process's


def admin_url(host: str, port: int) -> str:
    """The URL a local client reaches an admin port at (a wildcard address is not one to call)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def registration_path(state_dir: Path, pid: int) -> Path:
    return Path(state_dir) / GATEWAYS_DIR / f"{pid}.json"


class Registration:
    """This process's record in ``<state_dir>/gateways``: written at start, touched every
    HEARTBEAT_S (written again if someone removed it), removed on a clean stop."""

    def __init__(self, settings: GatewaySettings, pid: int, instance: dict | None = None) -> None:
        self.path = registration_path(settings.state_dir, pid)
        self.record = {"admin_url": admin_url(settings.admin_host, settings.admin_port), "pid": pid,
                       "host": settings.host, "port": settings.port, "started_at": time.time(), **(instance or {})}
        self._warned = False

    def write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.partial")
            partial.write_text(json.dumps(self.record))
            partial.replace(self.path)
        except OSError as exc:
            self._warn(exc)

    def touch(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            self.write()
        except OSError as exc:
            self._warn(exc)

    async def beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            self.touch()

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def _warn(self, exc: OSError) -> None:
        if not self._warned:  # once: a read-only state dir stays read-only
            self._warned = True
            log.warning("cannot register this gateway in the state dir: a watcher finds it only by "
                        "--gateway-admin-url", extra={"path": str(self.path), "error": str(exc)})


def raise_fd_limit(max_connections: int) -> int:
    """Raise the soft limit on open files to the hard one; the connection cap that fits under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    fits = max(16, (soft - FDS_SPARE) // FDS_PER_CONNECTION)
    if max_connections > fits:
        log.warning("--max-connections lowered to fit the open-file limit",
                    extra={"max_connections": max_connections, "lowered_to": fits, "fd_limit": soft})
        return fits
    return max_connections


def run(settings: GatewaySettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    from mlops_toolkit.jsonlog import configure_json_logging

    configure_json_logging(service="gateway")
    asyncio.run(serve(settings))


async def serve(settings: GatewaySettings, instance: dict | None = None) -> None:
    from dataclasses import replace

    settings = replace(settings, max_connections=raise_fd_limit(settings.max_connections))
    pid = os.getpid()
    gateway = Gateway(settings, instance={"pid": pid, **(instance or {})})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    data_app = gateway.app()
    data = await listen(data_app, settings.host, settings.port, "gateway", "--port", guards=gateway.guards,
                        reuse_port=settings.reuse_port)
    try:
        admin_app = gateway.admin_app()
        admin = await listen(admin_app, settings.admin_host, settings.admin_port, "gateway admin", "--admin-port",
                             guards=guards_for(admin_app, ListenLimits(max_connections=256)))
    except BaseException:
        await data.cleanup()
        raise
    log.info("gateway started", extra={
        "url": f"http://{settings.host}:{settings.port}", "admin": f"http://{settings.admin_host}:{settings.admin_port}",
        "routes_file": str(gateway.table.path), "table_serial": gateway.table.table.serial,
        "request_timeout_s": settings.request_timeout, "max_body_mb": settings.max_body_mb,
        "max_inflight": settings.max_inflight, "max_connections": settings.max_connections,
        "max_inflight_mb": settings.max_inflight_mb, "max_response_mb": settings.max_response_mb,
        "auth": settings.auth_token is not None, "admin_auth": settings.admin_token is not None,
        **(instance or {}),
    })
    registration = Registration(settings, pid, instance)
    registration.write()
    heartbeat = asyncio.create_task(registration.beat())
    try:
        await stop.wait()
        await data.drain()  # a rolling restart loses no request: in flight finishes, new ones go to the others
    finally:
        heartbeat.cancel()
        registration.remove()
        await admin.cleanup()
        await data.cleanup()
        log.info("gateway stopped")
