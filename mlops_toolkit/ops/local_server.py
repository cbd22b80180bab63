"""Start and stop a local ``mlflow server`` child process.

Used by ``mlops demo``, the test harness and the benchmarks, so all three run the same
fast configuration: one uvicorn worker (each extra worker added ~44 ms to every
keep-alive request on the 2-core dev machine), no job runner
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``: /health in 6-10 s instead of 25-40 s),
loopback only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mlops_toolkit import http
from mlops_toolkit.errors import MlopsError, ValidationError
from mlops_toolkit.ops.processes import (
    free_port,
    port_is_open,
    signal_group,
    who_listens,
)
from mlops_toolkit.waiting import WaitTimeout, wait_until


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
        def healthy() -> bool:
            if self.process.poll() is not None:
                raise MlopsError(f"mlflow server exited with code {self.process.returncode}; log: {self.log_path}")
            return http.answers(f"{self.uri}/health")

        try:
            wait_until(healthy, timeout, interval=0.2)
        except WaitTimeout:
            self.stop()
            raise MlopsError(f"mlflow server did not answer /health within {timeout:.0f} s; log: {self.log_path}") from None

    def __enter__(self) -> LocalMlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

