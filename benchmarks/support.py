"""Shared pieces of the benchmarks: tables, JSON results, a served model, load generators.

Processes (watcher, gateway, load client) come from the tests' harness, ``tests/harness.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import Watcher, wait_for


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    text = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    for row in [headers, *text]:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))


def write_json(name: str, data: dict[str, Any]) -> Path:
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


WEBHOOK_SERVER_ENV = {  # an MLflow server delivers registry webhooks to loopback only with these
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
}


def log_iris_versions(uri: str, model: str, count: int) -> list[int]:
    """``count`` real iris versions of ``model`` (a different C each) on the server at ``uri``."""
    from sklearn.linear_model import LogisticRegression

    import mlops_toolkit as mt
    from mlops_toolkit.batch.training import load_iris_split

    mt.configure(tracking_uri=uri, experiment="bench")
    X_train, X_val, y_train, _ = load_iris_split()
    versions = []
    for i in range(count):
        with mt.start_run(f"v{i + 1}") as run:
            fitted = LogisticRegression(C=0.5 + i, max_iter=500).fit(X_train, y_train)
            versions.append(run.log_model(fitted, register_as=model, input_example=X_val.head(3)))
    return versions


@dataclass(frozen=True)
class Registry:
    """A tracking server and the versions of one model on it (what a benchmark moves aliases between)."""

    uri: str
    model: str
    versions: list[int]


class ServingStack:
    """A local MLflow server (SQLite) with one iris model logged as N real versions."""

    def __init__(self, root: Path, versions: int = 3, model: str = "bench-iris", webhooks: bool = False) -> None:
        self.root, self.model, self.n_versions, self.webhooks = root, model, versions, webhooks
        self.server = None
        self.versions: list[int] = []

    def __enter__(self) -> ServingStack:
        from mlops_toolkit.ops.local_server import LocalMlflowServer

        env = dict(WEBHOOK_SERVER_ENV) if self.webhooks else {}
        if self.webhooks:
            from cryptography.fernet import Fernet

            env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
        self.server = LocalMlflowServer(f"sqlite:///{self.root / 'mlflow.db'}", self.root / "artifacts",
                                        extra_env=env).start()
        self.versions = log_iris_versions(self.server.uri, self.model, self.n_versions)
        return self

    @property
    def uri(self) -> str:
        return self.server.uri

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def closed_loop(url: str, body: bytes, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """``concurrency`` clients sending back to back for ``seconds``: (latencies s, errors)."""
    import asyncio

    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def side_by_side(cells: dict[tuple[int, str], tuple[list[float], int]], levels: list[int], modes: list[str],
                 seconds: float) -> tuple[list[list], list[dict]]:
    """Table rows and JSON results of closed-loop cells run in turns: each mode's throughput,
    p50 (and its difference from the first mode, the baseline), p99 and caller errors."""
    rows, results = [], []
    for c in levels:
        base = percentile(cells[(c, modes[0])][0], 50) * 1000
        for name in modes:
            latencies, errors = cells[(c, name)]
            p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
            results.append({"concurrency": c, "mode": name, "rps": len(latencies) / seconds, "p50_ms": p50,
                            "p99_ms": p99, "errors": errors})
            rows.append([c, name, f"{len(latencies) / seconds:.0f}", f"{p50:.2f}", f"{p50 - base:+.2f}",
                         f"{p99:.2f}", errors])
    return rows, results


@dataclass(frozen=True)
class Checkout:
    """The code a benchmark measures: a checkout's ``mlops`` and the modules it imports.

    A checkout with its own ``.venv`` runs its own ``mlops``; any other (a ``git worktree`` of
    an older commit) runs this interpreter's ``mlops`` with the checkout first on PYTHONPATH,
    so the old library and service modules are imported, not the editable install's. Every
    command runs in the checkout's root: a ``python -m`` child (the gateway) puts its working
    directory first on sys.path, and another checkout's modules there would shadow these.
    """

    root: Path

    @property
    def own_venv(self) -> bool:
        return (self.root / ".venv" / "bin" / "mlops").exists()

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python" if self.own_venv else Path(sys.executable)

    @property
    def mlops(self) -> Path:
        return self.python.parent / "mlops"

    def env(self, extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
        """This process's environment for the checkout's commands (``drop``: names to leave out)."""
        env = {k: v for k, v in os.environ.items() if k not in drop}
        if not self.own_venv:
            paths = [str(self.root), str(self.root / "services" / "autoserve"), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return {**env, **(extra or {})}

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """``mlops ARGS`` of this checkout: its stdout, or RuntimeError with its last stderr line."""
        done = subprocess.run([str(self.mlops), *args], env=env or self.env(), cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"mlops {' '.join(args)} exited {done.returncode}: {last}")
        return done.stdout

    def imported(self, *modules: str) -> dict[str, str]:
        """Where each of ``modules`` is imported from in the checkout's environment: the proof
        that the code measured is this checkout's (a module that does not import is left out)."""
        probe = ("import importlib, json, sys\nfound = {}\nfor name in sys.argv[1:]:\n    try:\n"
                 "        found[name] = importlib.import_module(name).__file__\n    except ImportError:\n"
                 "        pass\nprint(json.dumps(found))")
        done = subprocess.run([str(self.python), "-c", probe, *modules], env=self.env(), cwd=self.root,
                              capture_output=True, text=True, timeout=120, check=True)
        return json.loads(done.stdout)


class CheckoutWatcher(Watcher):
    """The harness's ``Watcher``, running ``checkout``'s ``mlops autoserve`` in ``env``."""

    def __init__(self, checkout: Checkout, env: dict[str, str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkout, self.env = checkout, env

    def start(self) -> CheckoutWatcher:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(self.checkout.mlops), *self.args], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, env=self.env,
                                            cwd=self.checkout.root)
        wait_for(self._up, 40, what=f"gateway on {self.url} and watcher on {self.watcher_url} (log {self.log_path})")
        return self

    def stop_everything(self) -> None:
        """Stop the watcher and make sure its gateway and serving processes are gone too, even
        when the watcher did not stop them itself (it hung past the timeout)."""
        from mlops_toolkit.ops.processes import pid_running, terminate

        pids = [r["pid"] for r in self.records() if r.get("pid")]
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            terminate(self.process.pid, group=True)
        for pid in pids:
            if pid_running(pid):
                terminate(pid, group=True)
        self.stop_gateway()


class HungPort:
    """A TCP listener on ``port`` that accepts every connection and never reads or answers,
    keeping the sockets open: what a client sees of a hung server. (A refused port fails
    fast; this one makes every client wait out its own timeouts.)"""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the listener was closed: the hang is over
                return
            self.accepted.append(conn)

    def __enter__(self) -> HungPort:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the thread is blocked in
        except OSError:
            pass
        self.listener.close()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
