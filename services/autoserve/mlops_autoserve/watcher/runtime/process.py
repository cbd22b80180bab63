"""Deployments as local ``mlflow models serve`` processes (the embedded default).

Each deployment is recorded in ``<state_dir>/deployments/*.json`` (pid, port, temp dir)
so that a restarted watcher can adopt processes that are still serving. Processes run in
their own session: a watcher that dies does not take them down. Each gets its own TMPDIR
because ``mlflow models serve`` downloads the model to a temp dir it never removes.

A record that is not one :meth:`ProcessRuntime.start` wrote (truncated, not JSON, a key
missing, a wrong type) names no process that can be adopted or stopped: it is moved aside
to ``<name>.json.bad`` with one warning, for an operator to look at, and the cycle goes on.

Output is bounded: uvicorn's access log is off (a line per request), and what the server
prints goes through :mod:`logcap` into ``<state_dir>/logs/<name>.log`` (and one rotated
``.log.1``), :data:`~logcap.CAP_BYTES` per deployment at most.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.envstore import ServeEnv
from mlops_autoserve.watcher.runtime import logcap
from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Health,
    ping,
    slug,
)
from mlops_toolkit.errors import one_line
from mlops_toolkit.ops.processes import pid_running, port_is_open, signal_group
from mlops_toolkit.waiting import wait_until

log = logging.getLogger("autoserve.process")

STOP_TIMEOUT = 10.0
FLUSH_TIMEOUT = 2.0  # for the log copier to write a dead server's last words


class BadRecord(ValueError):
    """A deployment record that is not one ``start`` wrote."""


class ProcessRuntime:
    manages_replicas = False  # one deployment per replica (see Runtime)

    def want(self, counts: dict[DeploymentKey, int], floors: dict[str, int]) -> None:
        """Never called: the watcher starts and stops each replica itself."""

    def __init__(self, settings: AutoserveSettings) -> None:
        self.settings = settings
        self.records = settings.state_dir / "deployments"
        self.logs = settings.state_dir / "logs"
        self.tmp = settings.state_dir / "tmp"
        for folder in (self.records, self.logs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}
        self._copiers: dict[int, subprocess.Popen] = {}  # serve pid -> its log copier (started here)
        self._reserved_ports: set[int] = set()
        self._lock = threading.Lock()

    # -- Runtime -------------------------------------------------------------------------
    def list(self) -> list[Deployment]:
        deployments = []
        for path in sorted(self.records.glob("*.json")):
            try:
                deployment = _read(path)
            except FileNotFoundError:
                continue  # stopped meanwhile (records are replaced atomically: never half written)
            except (OSError, ValueError) as exc:
                self._set_aside(path, exc)
                continue
            if self._alive(deployment):
                deployments.append(deployment)
            else:
                self._clean_up(deployment)
        return deployments

    def start(self, key: DeploymentKey, aliases: tuple[str, ...] = (), replica: int = 0,
              env: ServeEnv | None = None) -> Deployment:
        name = slug(key, replica)
        with self._lock:
            port = self._free_port()
            self._reserved_ports.add(port)
        tmp_dir = self.tmp / f"{name}-{port}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        host = self.settings.serve_host
        python = env.python if env is not None and env.python else sys.executable
        command = [
            python, "-m", "mlflow", "models", "serve",
            "-m", f"models:/{key.model}/{key.version}",
            # the environment was chosen (and built, if needed) before: MLflow must not build another
            "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(self.settings.workers),
        ]
        process_env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.settings.tracking_uri,
            "TMPDIR": str(tmp_dir),
            # models serve execs `uvicorn` through bash: it must find this environment's bin
            "PATH": os.pathsep.join([str(Path(python).parent), os.environ.get("PATH", "")]),
        }
        if env is not None:
            # A built environment is ours: its first start writes the bytecode of what it imports,
            # so later starts do not compile mlflow again (26 s instead of 12 s to serving here).
            process_env.pop("PYTHONDONTWRITEBYTECODE", None)
        log_path = self.logs / f"{name}.log"
        process, copier = _start_logged(command, process_env, log_path)
        record = {
            "model": key.model, "version": key.version, "pid": process.pid, "port": port,
            "url": f"http://{host}:{port}", "tmp_dir": str(tmp_dir), "log": str(log_path),
            "started_at": time.time(), "aliases": list(aliases), "replica": replica,
            "env": env.key if env is not None else None,
        }
        path = self.records / f"{name}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.replace(path)
        with self._lock:
            self._children[process.pid] = process
            self._copiers[process.pid] = copier
            self._reserved_ports.discard(port)
        return _deployment(record, path)

    def health(self, deployment: Deployment) -> Health:
        if not self._alive(deployment):
            with self._lock:
                copier = self._copiers.pop(int(deployment.ident), None)
            if copier is not None:  # its last words may still be in the pipe: on disk before anyone quotes them
                with contextlib.suppress(subprocess.TimeoutExpired):
                    copier.wait(FLUSH_TIMEOUT)
            return Health.DEAD
        return Health.READY if ping(deployment.url) else Health.STARTING

    def stop(self, deployment: Deployment) -> None:
        pid = int(deployment.ident)
        if self._alive(deployment):
            signal_group(pid, signal.SIGTERM)
            if not self._wait_exit(pid, STOP_TIMEOUT):
                signal_group(pid, signal.SIGKILL)
                self._wait_exit(pid, 5)
        self._clean_up(deployment)

    # -- helpers -------------------------------------------------------------------------
    def _alive(self, deployment: Deployment) -> bool:
        pid = int(deployment.ident)
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        return _proc_matches(pid, deployment)

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        child = self._children.get(pid)

        def exited() -> bool:
            return child.poll() is not None if child is not None else not pid_running(pid)

        return bool(wait_until(exited, timeout, interval=0.05, default=False))

    def _clean_up(self, deployment: Deployment) -> None:
        """Forget a stopped or dead deployment: record, temp dir, stray processes."""
        pid = int(deployment.ident)
        if not pid_running(pid) and pid != os.getpgrp():
            # uvicorn left behind by a killed parent. Safe: Linux never reuses a pid that is
            # still some process group's id, so this group can only hold our orphans.
            signal_group(pid, signal.SIGKILL)
        with self._lock:
            self._children.pop(pid, None)
            self._copiers.pop(pid, None)  # exits by itself once the server's output closes
        if deployment.tmp_dir and Path(deployment.tmp_dir).resolve().parent == self.tmp.resolve():
            shutil.rmtree(deployment.tmp_dir, ignore_errors=True)  # only ever one of ours
        record = deployment.record_path
        if record:
            with contextlib.suppress(OSError, ValueError):  # a bad record is set aside by list()
                if _read(Path(record)).ident == str(pid):  # not a newer deployment of the same version
                    Path(record).unlink()

    def _set_aside(self, path: Path, exc: Exception) -> None:
        """Move an unusable record to ``<name>.json.bad``: no pid in it can be trusted, so its
        process (if any) is neither adopted nor stopped; one warning, as it leaves the listing."""
        aside = path.with_name(path.name + ".bad")
        try:
            path.replace(aside)
        except FileNotFoundError:
            return  # another thread set it aside
        except OSError as move_error:
            aside = f"not moved: {one_line(move_error)}"
        log.warning("deployment record unusable: skipped", extra={"record": str(path), "moved_to": str(aside),
                                                                   "error": one_line(exc)})

    def _free_port(self) -> int:
        used = set(self._reserved_ports)
        for path in self.records.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                used.add(_read(path).port)
        low, high = self.settings.port_range
        for port in range(low, high + 1):
            if port not in used and not port_is_open(self.settings.serve_host, port):
                return port
        raise RuntimeError(f"no free port in {low}-{high}")


def _start_logged(command: list[str], env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """The serve process, its output piped through a :mod:`logcap` copier into ``log_path``."""
    # uvicorn's click options read UVICORN_* variables: no access log line per request
    env = {**env, "UVICORN_ACCESS_LOG": "false"}
    read_end, write_end = os.pipe()
    try:
        copier = subprocess.Popen([sys.executable, "-I", "-S", logcap.__file__, str(log_path)], stdin=read_end,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    try:
        process = subprocess.Popen(command, stdout=write_end, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)  # the server holds it now: the copier ends when the server's output does
    return process, copier


def _read(path: Path) -> Deployment:
    """The deployment a record file describes; ValueError (BadRecord, or bad JSON) otherwise."""
    try:
        record = json.loads(path.read_bytes())
    except RecursionError:
        raise BadRecord("nested too deep") from None
    return _deployment(record, path)


def _deployment(record: object, path: Path) -> Deployment:
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    pid = _field(record, "pid", int)
    if not 2 <= pid < 2**31:  # 0 would make signal_group() signal the watcher's own process group
        raise BadRecord(f"pid {str(pid)[:20]} is not a serve process")
    aliases = _field(record, "aliases", list, [])
    if not all(isinstance(a, str) for a in aliases):
        raise BadRecord("aliases: expected strings")
    return Deployment(
        key=DeploymentKey(_field(record, "model", str), _field(record, "version", int)),
        url=_field(record, "url", str),
        ident=str(pid),
        started_at=_field(record, "started_at", float),
        replica=_field(record, "replica", int, 0),
        port=_field(record, "port", int),
        aliases=tuple(aliases),
        log_path=_field(record, "log", (str, type(None)), None),
        record_path=str(path),
        tmp_dir=_field(record, "tmp_dir", (str, type(None)), None),
        env=_field(record, "env", (str, type(None)), None),
    )


_REQUIRED = object()


def _field(record: dict, name: str, kind: type | tuple[type, ...], default: object = _REQUIRED):
    """``record[name]`` if it has the type ``start`` writes (a bool is no number), else BadRecord."""
    value = record.get(name, default)
    if value is _REQUIRED:
        raise BadRecord(f"missing {name!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) <= sys.float_info.max:
        value = float(value)  # JSON writes 0.0 as 0
    if not isinstance(value, kind) or isinstance(value, bool):
        wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BadRecord(f"{name}: expected {wanted.replace('NoneType', 'null')}, got {type(value).__name__}")
    return value


def _proc_matches(pid: int, deployment: Deployment) -> bool:
    """Is ``pid`` still the serve process we recorded (and not a recycled pid)?"""
    if not pid_running(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    key = deployment.key
    wanted = [f"models:/{key.model}/{key.version}".encode(), str(deployment.port).encode()]
    return all(w in argv for w in wanted)
