"""The harness for tests (and benchmarks) that drive real processes.

``Watcher`` runs a real ``mlops autoserve`` (which starts its gateway); ``LoadClient`` sends
requests back to back and records every outcome with its time and the version that
answered; ``CountingProxy`` sits in front of a tracking server on loopback and counts every
HTTP request that passes, so "how many requests did this cost" is measured on the wire.
"""

from __future__ import annotations

import http.client as http_client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlops_toolkit import http
from mlops_toolkit.ops.processes import free_port, pid_running
from mlops_toolkit.waiting import wait_until

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class CountingProxy:
    """A loopback HTTP/1.1 reverse proxy that counts requests per (method, path)."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers + body writes stall 40 ms on delayed ACKs

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = _read_body(self)
                with proxy._lock:
                    proxy.counts[(self.command, self.path.split("?")[0])] += 1
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                for attempt in (1, 2):
                    upstream = getattr(self, "_upstream", None)
                    reused = upstream is not None
                    if upstream is None:
                        upstream = self._upstream = http_client.HTTPConnection(upstream_host, upstream_port, timeout=120)
                    try:
                        upstream.request(self.command, self.path, body=body, headers=headers)
                        response = upstream.getresponse()
                        payload = response.read()
                        break
                    except (http_client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                        # the server closed an idle keep-alive connection: reconnect once
                        upstream.close()
                        self._upstream = None
                        if attempt == 2 or not reused:
                            raise
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {f"{m} {p}": n for (m, p), n in sorted(self.counts.items())}

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _read_body(handler: BaseHTTPRequestHandler) -> bytes | None:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else None


IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
IRIS_SPLIT = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}


# One way to wait, everywhere: the toolkit's own helper (raises WaitTimeout naming `what`).
wait_for = wait_until


def http_json(method: str, url: str, body: Any = None, headers: dict | None = None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) for any HTTP answer; OSError when nothing answers."""
    response = http.request(method, url, data=raw, json_body=body if raw is None else None, headers=headers,
                            timeout=30)
    try:
        return response.status, dict(response.headers), response.json()
    except ValueError:
        return response.status, dict(response.headers), response.text()


class Watcher:
    """``mlops autoserve`` as a child process with its own ports (gateway, gateway admin,
    watcher), port range and state; the gateway it starts is a process of its own."""

    def __init__(self, tracking_uri: str, state_dir: Path, models: list[str], *extra: str,
                 poll_interval: float = 0.5, secret: str | None = None, port: int | None = None,
                 watcher_port: int | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.state_dir = state_dir
        self.port = port or free_port()
        self.admin_port, self.watcher_port = free_port(), watcher_port or free_port()
        base = 20000 + (os.getpid() * 7 + self.port) % 9000
        self.args = [
            "autoserve", "--tracking-uri", tracking_uri, "--models", ",".join(models),
            "--poll-interval", str(poll_interval), "--port", str(self.port), "--admin-port", str(self.admin_port),
            "--watcher-port", str(self.watcher_port),
            "--port-range", f"{base}-{base + 40}", "--state-dir", str(state_dir), "--ready-timeout", "90",
            *(["--webhook-secret", secret] if secret else []), *extra,
        ]
        self.log_path = state_dir.parent / f"watcher-{self.port}.log"
        # Gateway instance i has admin port admin_port + i.
        self.gateway_instances = int(extra[extra.index("--gateway-instances") + 1]) if "--gateway-instances" in extra else 1
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The gateway: /serve/..., /health."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """The gateway's admin port: /endpoints, /inflight, /metrics."""
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def watcher_url(self) -> str:
        """The watcher itself: /health, /metrics, /webhooks/mlflow."""
        return f"http://127.0.0.1:{self.watcher_port}"

    def start(self) -> Watcher:
        script = Path(sys.executable).parent / "mlops"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(script), *self.args], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(lambda: self._up(), 40, what=f"gateway on {self.url} and watcher on {self.watcher_url} "
                                               f"(log {self.log_path})")
        return self

    def _up(self) -> bool:
        assert self.process.poll() is None, f"watcher exited: {self.log_tail()}"
        return all(_answers(url + "/health") for url in (self.url, self.admin_url, self.watcher_url))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the watcher (SIGTERM also stops the gateway it started)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        return self.process.wait(timeout)

    def gateway_pid(self) -> int | None:
        try:
            return int(json.loads((self.state_dir / "gateway.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def stop_gateway(self) -> None:
        """After a watcher killed with -9, the gateway is still running: stop it too."""
        pid = self.gateway_pid()
        if pid and pid_running(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not pid_running(pid), 15, what=f"gateway pid {pid} to exit")

    def endpoints(self) -> dict[str, dict]:
        _, _, data = http_json("GET", self.admin_url + "/endpoints")
        return {e["alias"]: e for e in data}

    def endpoint_ready(self, alias: str, version: int) -> dict | None:
        endpoint = self.endpoints().get(alias)
        ok = endpoint and endpoint["state"] == "ready" and endpoint["version"] == version
        return endpoint if ok else None

    def invoke(self, model: str, alias: str, payload: Any = IRIS_SPLIT):
        return http_json("POST", f"{self.url}/serve/{urllib.parse.quote(model)}/{alias}/invocations", payload)

    def serving(self, model: str, timeout: float = 120, **aliases: int) -> None:
        """Point each alias at its version and wait until the gateway serves all of them."""
        import mlops_toolkit as mt

        for alias, version in aliases.items():
            mt.set_alias(model, alias, version)
        for alias, version in aliases.items():
            wait_for(lambda a=alias, v=version: self.endpoint_ready(a, v), timeout, what=f"{alias} on v{version}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` (watcher and gateway) whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.split("{")[0].split(" ")[0] == name and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def metrics_text(self) -> str:
        """The /metrics pages of the watcher (control loop) and of every gateway instance (requests)."""
        pages = []
        instances = [f"http://127.0.0.1:{self.admin_port + i}" for i in range(self.gateway_instances)]
        for url in (self.watcher_url, *instances):
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                pages.append(response.read().decode())
        return "".join(pages)

    def records(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.state_dir / "deployments").glob("*.json"))]

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def _answers(url: str) -> bool:
    """Anything HTTP came back (a 503 'stale' counts: the listener is up)."""
    try:
        http.get(url, timeout=1)
        return True
    except http.Unreachable:
        return False


def restart_docker_daemon() -> None:
    """Stop and start the Docker engine; return once it answers again."""
    if shutil.which("systemctl") and subprocess.run(["systemctl", "is-active", "--quiet", "docker"],
                                                    capture_output=True).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True)
    else:
        pid = int(subprocess.run(["pgrep", "-o", "-x", "dockerd"], capture_output=True, text=True, check=True).stdout)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 60, what="dockerd stopped")
        log = open("/tmp/dockerd-restarted.log", "ab")
        subprocess.Popen([a.decode() for a in argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0, 60, what="dockerd back")


def live_restore_enabled() -> bool:
    """Does the running Docker daemon keep containers running while it restarts?"""
    result = subprocess.run(["docker", "info", "--format", "{{.LiveRestoreEnabled}}"], capture_output=True, text=True)
    return result.stdout.strip() == "true"


class LoadClient:
    """Sends requests on one keep-alive connection and records every outcome.

    Closed loop by default (next request as soon as the last answered); with ``rate`` it
    paces requests at that many per second. ``events`` keeps (monotonic time, status or
    error name, X-Model-Version) for every request.
    """

    def __init__(self, port: int, path: str, payload: Any = IRIS_SPLIT, rate: float | None = None,
                 retry_reset: bool = False) -> None:
        self.port, self.path, self.rate = port, path, rate
        self.retry_reset = retry_reset  # send again, once, over a new connection when one was reset or closed
        self.retried = 0
        self.body = json.dumps(payload).encode()
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.events: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self) -> http_client.HTTPConnection:
        return http_client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _send(self, conn: http_client.HTTPConnection) -> tuple[str, str]:
        conn.request("POST", self.path, body=self.body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return str(response.status), response.getheader("X-Model-Version", "?")

    def _run(self) -> None:
        conn = self._connect()
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.rate:
                next_at += 1.0 / self.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                outcome, version = self._send(conn)
            except (OSError, http_client.HTTPException) as exc:
                conn.close()
                conn = self._connect()
                outcome, version = type(exc).__name__, "?"
                if self.retry_reset and isinstance(exc, ConnectionError | http_client.RemoteDisconnected):
                    self.retried += 1
                    try:
                        outcome, version = self._send(conn)
                    except (OSError, http_client.HTTPException) as again:
                        conn.close()
                        conn = self._connect()
                        outcome = type(again).__name__
            self.codes[outcome] += 1
            self.versions[version] += 1
            self.events.append((time.monotonic(), outcome, version))

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "200")

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    def first_answer(self, version: int, since: float) -> float | None:
        """Monotonic time of the first 200 from ``version`` at or after ``since``."""
        wanted = str(version)
        return next((t for t, code, v in self.events if t >= since and code == "200" and v == wanted), None)

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for t, code, _ in self.events if start <= t <= end and code != "200")

    def __enter__(self) -> LoadClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def move_alias_under_load(watcher: Watcher, model: str, alias: str, version: int, timeout: float) -> LoadClient:
    """Move ``model@alias`` to ``version`` while a client calls the gateway back to back;
    returns the client once the new version has answered 20 times."""
    import mlops_toolkit as mt

    path = f"/serve/{urllib.parse.quote(model)}/{alias}/invocations"
    with LoadClient(watcher.port, path) as client:
        wait_for(lambda: client.sent > 20, 10, what="load running")
        mt.set_alias(model, alias, version)
        wait_for(lambda: client.versions.get(str(version), 0) > 20, timeout, what=f"v{version} answering")
    return client
