"""Real server binaries on loopback ports for tests (Pushgateway, blackbox exporter, moto's S3)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import need
from tests.harness import wait_for


def binary(*names: str, path: str | None = None) -> str:
    """Path of the first installed binary of ``names``: skip (fail under CI) if none is."""
    found = next((p for p in (shutil.which(n, path=path) for n in names) if p), None)
    need(found is not None, f"{names[0]} is not installed (see .ci/run for what CI installs)")
    return found


class Daemon:
    """A server binary on a loopback port, ready once ``ready_path`` answers 200."""

    def __init__(self, command: list[str], port: int, log_path: Path, ready_path: str = "/metrics") -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._ready(ready_path), 30, what=f"{command[0]} on {self.url} (log {log_path})")

    def _ready(self, path: str) -> bool:
        assert self.process.poll() is None, f"exited: {self.log_path.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(self.url + path, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
