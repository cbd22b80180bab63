"""Deployments as local ``mlflow models serve`` processes (the embedded default).

Each deployment is recorded in ``<state_dir>/deployments/*.json`` (pid, port, temp dir)
so that a restarted watcher can adopt processes that are still serving. Processes run in
their own session: a watcher that dies does not take them down. Each gets its own TMPDIR
because ``mlflow models serve`` downloads the model to a temp dir it never removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mlops_autoserve.watcher.envstore import ServeEnv
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey, Health, ping, slug
from mlops_autoserve.settings import AutoserveSettings
from mlops_toolkit.ops.processes import pid_running, port_is_open, signal_group
from mlops_toolkit.waiting import wait_until

STOP_TIMEOUT = 10.0


class ProcessRuntime:
    def __init__(self, settings: AutoserveSettings) -> None:
        self.settings = settings
        self.records = settings.state_dir / "deployments"
        self.logs = settings.state_dir / "logs"
        self.tmp = settings.state_dir / "tmp"
        for folder in (self.records, self.logs, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}
        self._reserved_ports: set[int] = set()
        self._lock = threading.Lock()

    # -- Runtime -------------------------------------------------------------------------
    def list(self) -> list[Deployment]:
        deployments = []
        for path in sorted(self.records.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being written right now
            deployment = _deployment(record, path)
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
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=process_env, start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
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
            self._reserved_ports.discard(port)
        return _deployment(record, path)

    def health(self, deployment: Deployment) -> Health:
        if not self._alive(deployment):
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
        if not pid_running(pid):
            # uvicorn left behind by a killed parent. Safe: Linux never reuses a pid that is
            # still some process group's id, so this group can only hold our orphans.
            signal_group(pid, signal.SIGKILL)
        with self._lock:
            self._children.pop(pid, None)
        if deployment.tmp_dir:
            shutil.rmtree(deployment.tmp_dir, ignore_errors=True)
        record = deployment.record_path
        if record:
            with contextlib.suppress(FileNotFoundError):
                current = json.loads(Path(record).read_text())
                if current.get("pid") == pid:  # not a newer deployment of the same version
                    Path(record).unlink()

    def _free_port(self) -> int:
        used = set(self._reserved_ports)
        for path in self.records.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                used.add(int(json.loads(path.read_text())["port"]))
        low, high = self.settings.port_range
        for port in range(low, high + 1):
            if port not in used and not port_is_open(self.settings.serve_host, port):
                return port
        raise RuntimeError(f"no free port in {low}-{high}")


def _deployment(record: dict, path: Path) -> Deployment:
    return Deployment(
        key=DeploymentKey(record["model"], int(record["version"])),
        url=record["url"],
        ident=str(record["pid"]),
        started_at=float(record["started_at"]),
        replica=int(record.get("replica", 0)),
        port=int(record["port"]),
        aliases=tuple(record.get("aliases", ())),
        log_path=record.get("log"),
        record_path=str(path),
        tmp_dir=record.get("tmp_dir"),
        env=record.get("env"),
    )


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
