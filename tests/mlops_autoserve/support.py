"""Drive a real ``mlops autoserve`` process and a client that never stops sending."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops_toolkit.local_server import free_port
from mlops_toolkit.local_server import pid_running as pid_alive  # noqa: F401 (re-exported for tests)

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
IRIS_SPLIT = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}; last value: {last!r}")


def http_json(method: str, url: str, body: Any = None, headers: dict | None = None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) without raising on 4xx/5xx."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None and raw is None else {}), **(headers or {})
    })
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, hdrs, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, payload = exc.code, dict(exc.headers), exc.read()
    try:
        return status, hdrs, json.loads(payload)
    except ValueError:
        return status, hdrs, payload.decode(errors="replace")


class Watcher:
    """``mlops autoserve`` as a child process with its own gateway port, port range and state."""

    def __init__(self, tracking_uri: str, state_dir: Path, models: list[str], *extra: str,
                 poll_interval: float = 0.5, secret: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.state_dir = state_dir
        self.port = free_port()
        base = 20000 + (os.getpid() * 7 + self.port) % 9000
        self.args = [
            "autoserve", "--tracking-uri", tracking_uri, "--models", ",".join(models),
            "--poll-interval", str(poll_interval), "--port", str(self.port),
            "--port-range", f"{base}-{base + 40}", "--state-dir", str(state_dir), "--ready-timeout", "90",
            *(["--webhook-secret", secret] if secret else []), *extra,
        ]
        self.log_path = state_dir.parent / f"watcher-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Watcher:
        script = Path(sys.executable).parent / "mlops"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(script), *self.args], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(lambda: self._up(), 30, what=f"gateway on {self.url} (log {self.log_path})")
        return self

    def _up(self) -> bool:
        assert self.process.poll() is None, f"watcher exited: {self.log_tail()}"
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def endpoints(self) -> dict[str, dict]:
        _, _, data = http_json("GET", self.url + "/endpoints")
        return {e["alias"]: e for e in data}

    def endpoint_ready(self, alias: str, version: int) -> dict | None:
        endpoint = self.endpoints().get(alias)
        ok = endpoint and endpoint["state"] == "ready" and endpoint["version"] == version
        return endpoint if ok else None

    def invoke(self, model: str, alias: str, payload: Any = IRIS_SPLIT):
        return http_json("POST", f"{self.url}/serve/{urllib.parse.quote(model)}/{alias}/invocations", payload)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            return response.read().decode()

    def records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.state_dir / "deployments").glob("*.json"))]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


class LoadClient:
    """Sends requests back to back on one keep-alive connection; counts every outcome."""

    def __init__(self, port: int, path: str, payload: Any = IRIS_SPLIT) -> None:
        self.port, self.path = port, path
        self.body = json.dumps(payload).encode()
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                conn.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                self.codes[str(response.status)] += 1
                self.versions[response.getheader("X-Model-Version", "?")] += 1
            except (OSError, http.client.HTTPException) as exc:
                self.codes[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "200")

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def __enter__(self) -> LoadClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
