"""Start and stop a local ``mlflow server`` child process.

Used by ``mlops demo``, the test harness and the benchmarks, so all three run the same
fast configuration (FACTS): one uvicorn worker, no job runner, loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mlops_toolkit.errors import MlopsError, ValidationError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def who_listens(port: int) -> str | None:
    """'pid 123 (cmdline)' of the process listening on TCP ``port``, from /proc (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(fields[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
            if any(f"socket:[{inode}]" in links for inode in inodes):
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {proc.name} ({cmdline[:120]})"
        except OSError:
            continue
    return "another user's process"


@dataclass
class LocalMlflowServer:
    """An ``mlflow server`` process on ``host:port`` with the given stores."""

    backend_store_uri: str
    artifacts_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    workers: int = 1
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # e.g. ["--expose-prometheus", DIR]
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 90.0) -> LocalMlflowServer:
        """Start the server and wait until ``/health`` answers (typically 6-10 s)."""
        if not self.port:
            self.port = free_port(self.host)
        elif port_is_open(self.host, self.port):
            holder = who_listens(self.port) or "an unknown process"
            raise ValidationError(f"port {self.port} on {self.host} is already in use by {holder}")
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.artifacts_dir.parent / "mlflow-server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", str(self.artifacts_dir),
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
            *self.extra_args,
        ]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.log_path = log_path
        self._wait_healthy(timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every worker it forked (its own process group)."""
        if self.process is None or self.process.poll() is not None:
            return
        signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MlopsError(f"mlflow server exited with code {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise MlopsError(f"mlflow server did not answer /health within {timeout:.0f} s; log: {self.log_path}")

    def __enter__(self) -> LocalMlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (a child started with start_new_session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
