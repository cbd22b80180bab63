"""Start the gateway as a process of its own, or reuse the one already running.

``mlops autoserve`` brings everything up in one command, but the gateway must outlive the
watcher: it runs in its own session (a watcher killed with -9 does not take it down) and
is recorded in ``<state_dir>/gateway.json``. A restarted watcher finds it there and reuses
it when it still answers with the same options; otherwise it is replaced. While the watcher
runs it supervises the gateway it started or reused: one that died is started again
(:meth:`GatewayProcess.alive`, :meth:`GatewayProcess.restart`). With ``--gateway-instances N``
the process is the supervisor of N gateways (``mlops gateway --instances N``,
:mod:`gateway.instances`): it restarts a dead instance itself, the watcher restarts it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from mlops_autoserve.gateway.instances import admin_ports
from mlops_autoserve.gateway.payloadlog import redacted
from mlops_autoserve.gateway.server import GATEWAYS_DIR
from mlops_autoserve.gateway.server import admin_url as url_of
from mlops_autoserve.options import declared, default_of
from mlops_autoserve.settings import GatewaySettings
from mlops_toolkit import http
from mlops_toolkit.errors import MlopsError, ValidationError
from mlops_toolkit.ops.processes import pid_running, port_is_open, terminate
from mlops_toolkit.waiting import WaitTimeout, wait_until

log = logging.getLogger("autoserve.gateway_process")

RECORD = "gateway.json"
START_TIMEOUT = 20.0


class GatewayProcess:
    def __init__(self, settings: GatewaySettings, auth_token_file: Path | None = None,
                 admin_token_file: Path | None = None) -> None:
        self.settings = settings
        self.auth_token_file = auth_token_file
        self.admin_token_file = admin_token_file
        self.record_path = Path(settings.state_dir) / RECORD
        self.log_path = Path(settings.state_dir) / "logs" / "gateway.log"
        self.pid: int | None = None
        self.process: subprocess.Popen | None = None  # when this watcher started it: poll() reaps it

    @property
    def admin_url(self) -> str:
        """The first instance's admin URL (the only one's without --gateway-instances)."""
        return self.admin_urls[0]

    @property
    def admin_urls(self) -> tuple[str, ...]:
        return tuple(url_of(self.settings.admin_host, port) for port in admin_ports(self.settings))

    def ensure(self) -> str:
        """Reuse a running gateway with these options, else start one; 'reused' or 'started'."""
        record = self._record()
        if record and pid_running(record["pid"]) and _is_gateway(record["pid"]):
            if record.get("options") == self._options() and all(_answers(url) for url in self.admin_urls):
                self.pid = record["pid"]
                log.info("reusing the running gateway", extra={"pid": self.pid, "admin": self.admin_url})
                return "reused"
            log.info("replacing a gateway started with other options", extra={"pid": record["pid"]})
            terminate(record["pid"])
        s = self.settings
        for host, port, option in ((s.host, s.port, "--port"),
                                   *((s.admin_host, p, "--admin-port") for p in admin_ports(s))):
            if port_is_open(_local(host), port):
                raise ValidationError(f"gateway port {host}:{port} is already in use; pick another with {option}")
        self._start()
        return "started"

    def alive(self) -> bool:
        """Is the gateway this watcher runs still running? (A child of ours that died is reaped
        here: a zombie would still look alive to a signal-0 check.)"""
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and pid_running(self.pid) and _is_gateway(self.pid)

    def restart(self) -> None:
        """Start the gateway again after it died: same options, same ports (freed by its death)."""
        log.error("the gateway died; starting it again",
                  extra={"pid": self.pid, "exit_code": self.process.returncode if self.process else None})
        if self.pid is not None:
            self._wait_for_instances_of(self.pid)
        self._start()

    def _wait_for_instances_of(self, supervisor: int, timeout: float = 5.0) -> None:
        """A supervisor's instances stop when it dies (SIGTERM from the kernel) and free the
        ports the new ones need: wait for them, a moment, rather than fail to bind."""
        def instances() -> list[int]:
            pids = []
            for path in (Path(self.settings.state_dir) / GATEWAYS_DIR).glob("*.json"):
                try:
                    record = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(record, dict) and record.get("supervisor") == supervisor \
                        and isinstance(record.get("pid"), int) and pid_running(record["pid"]):
                    pids.append(record["pid"])
            return pids

        wait_until(lambda: not instances(), timeout, interval=0.05, default=None)

    def stop(self) -> None:
        record = self._record()
        pid = self.pid or (record or {}).get("pid")
        if pid and pid_running(pid) and _is_gateway(pid):
            terminate(pid)
        self.record_path.unlink(missing_ok=True)

    def _start(self) -> None:
        s = self.settings
        command = [sys.executable, "-m", "mlops_autoserve.gateway", *command_line(s),  # without MLflow's imports
                   *(["--auth-token-file", str(self.auth_token_file)] if self.auth_token_file else []),
                   *(["--admin-token-file", str(self.admin_token_file)] if self.admin_token_file else [])]
        # The app-db URL may hold a password: the environment, not the command line (ps shows that).
        env = {k: v for k, v in os.environ.items() if k != "APP_DB_URL"}
        if s.payload_log_db:
            env["APP_DB_URL"] = s.payload_log_db
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
        def up() -> bool:
            if process.poll() is not None:
                raise MlopsError(f"the gateway exited at start: {_last_line(self.log_path)}")
            return all(_answers(url) for url in self.admin_urls)

        try:
            wait_until(up, START_TIMEOUT)
        except WaitTimeout:
            terminate(process.pid)
            raise MlopsError(f"the gateway did not answer within {START_TIMEOUT:.0f} s; log: {self.log_path}") from None
        self.pid, self.process = process.pid, process
        partial = self.record_path.with_suffix(".partial")
        partial.write_text(json.dumps({"pid": process.pid, "options": self._options()}))
        partial.replace(self.record_path)
        log.info("gateway started", extra={"pid": process.pid, "url": f"http://{s.host}:{s.port}",
                                           "admin": self.admin_url})

    def _options(self) -> dict:
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()
                   if k not in ("auth_token", "admin_token", "payload_log_db")}
        # Which app-db, not its password: the record is a file in the state dir.
        options["payload_log_db"] = redacted(self.settings.payload_log_db) if self.settings.payload_log_db else None
        options["auth_token_file"] = str(self.auth_token_file) if self.auth_token_file else None
        options["admin_token_file"] = str(self.admin_token_file) if self.admin_token_file else None
        return options

    def _record(self) -> dict | None:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None


# Given otherwise: tokens by their files (a token on a command line shows in ps), the app-db
# URL in the environment (it may hold a password).
NOT_ON_THE_COMMAND_LINE = ("auth_token", "admin_token", "payload_log_db")


def command_line(settings: GatewaySettings) -> list[str]:
    """``mlops gateway`` options that give a gateway process these settings."""
    args: list[str] = []
    for f, option in declared(GatewaySettings, skip=NOT_ON_THE_COMMAND_LINE):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            if value != default_of(f):
                args.append(option.flag)
        elif value is not None:
            args += [option.flag, str(value)]
    return args


def _answers(url: str) -> bool:
    return http.answers(f"{url}/health")


def _local(host: str) -> str:
    """Where to look for a listener on ``host`` (a wildcard address is not one to connect to)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _is_gateway(pid: int) -> bool:
    """Is ``pid`` a gateway process (and not a recycled pid)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlops_autoserve.gateway" in argv or (b"gateway" in argv and b"mlops_toolkit.cli" in argv)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
