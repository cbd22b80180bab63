"""`mlops gateway --instances N` as an operator runs it: real gateway processes on one port.

The backend is a fake (a small aiohttp app in this test process, answering /invocations and
/ping), routed through a routes.json written here with the route table's own writer: what
is tested is the gateway's processes, not a model. A closed-loop client keeps sending while
an instance is killed with -9; the supervisor must bring it back within a second and the
client, retrying a reset connection once as any HTTP client does, must lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import pytest
from aiohttp import web
from mlops_autoserve.gateway.server import GATEWAYS_DIR
from mlops_autoserve.routetable import (
    Replica,
    RouteEntry,
    RouteTable,
    table_path,
    write,
)

from mlops_toolkit import http
from mlops_toolkit.ops.processes import pid_running, terminate

MODEL, ALIAS = "fake", "prod"


class FakeBackend:
    """A stand-in for a model server: /ping, and /invocations answering ``{"ok": true}``
    after the ``sleep_ms`` the request asks for."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> FakeBackend:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/invocations", self.invocations), web.get("/ping", self.ping)])
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001

    async def invocations(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(float(body.get("sleep_ms", 0)) / 1000)
        return web.json_response({"ok": True})

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def write_routes(state_dir: Path, backend_url: str) -> None:
    route = RouteEntry(MODEL, ALIAS, 1, 1, "ready", time.time(), replicas=(Replica(backend_url, "fake-backend"),))
    write(table_path(state_dir), RouteTable(1, time.time(), (route,)))


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


@dataclass
class RunningGateway:
    process: subprocess.Popen
    state_dir: Path
    port: int
    admin_port: int
    instances: int
    log: Path
    admin_token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def admin_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.admin_port + index}"

    def health(self, index: int) -> dict | None:
        return http.get_json(self.admin_url(index) + "/health", timeout=0.5)

    def pids(self) -> list[int | None]:
        return [(self.health(i) or {}).get("pid") for i in range(self.instances)]

    def records(self) -> dict[int, dict]:
        directory = self.state_dir / GATEWAYS_DIR
        return {int(p.stem): json.loads(p.read_text()) for p in directory.glob("*.json")} if directory.exists() else {}


def start_gateway(tmp_path: Path, backend_url: str, instances: int, admin_token: str | None = None) -> RunningGateway:
    state = tmp_path / "state"
    write_routes(state, backend_url)
    port = free_ports(1)
    admin = free_ports(instances)
    token_args = []
    if admin_token:
        (tmp_path / "admin-token").write_text(admin_token + "\n")
        token_args = ["--admin-token-file", str(tmp_path / "admin-token")]
    log = tmp_path / "gateway.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_toolkit.cli", "gateway", "--instances", str(instances), "--state-dir",
             str(state), "--port", str(port), "--admin-port", str(admin), *token_args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    gateway = RunningGateway(process, state, port, admin, instances, log, admin_token)
    deadline = time.monotonic() + 60  # the first start imports everything: seconds on a busy machine
    while None in gateway.pids():
        assert process.poll() is None, f"the gateway exited: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"the gateway did not start: {log.read_text()[-2000:]}"
        time.sleep(0.1)
    return gateway


def stop_gateway(gateway: RunningGateway) -> None:
    pids = [p for p in gateway.pids() if p]
    if gateway.process.poll() is None:
        terminate(gateway.process.pid, timeout=15)
    for pid in pids:  # whatever the test did to the supervisor, no instance is left behind
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend().start()
    yield fake
    fake.stop()


@pytest.fixture
def two_instances(tmp_path, backend) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path, backend.url, 2)
    yield gateway
    stop_gateway(gateway)


def invoke(port: int, sleep_ms: float = 0, timeout: float = 10) -> int:
    """One request on a new connection (the kernel picks the instance per connection)."""
    connection = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", f"/serve/{MODEL}/{ALIAS}/invocations", body=json.dumps({"sleep_ms": sleep_ms}),
                           headers={"Content-Type": "application/json"})
        return connection.getresponse().status
    finally:
        connection.close()


@dataclass
class ClosedLoop:
    """Clients that send one request after the other until stopped; a connection refused or
    reset (no HTTP answer) is retried once."""

    port: int
    statuses: dict[int, int] = field(default_factory=dict)
    resets: int = 0  # requests that got no answer on the first try
    lost: int = 0  # ... nor on the retry
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        while not self.stop.is_set():
            for attempt in (1, 2):
                try:
                    status = invoke(self.port, sleep_ms=2)
                except (ConnectionError, HTTPException, OSError):
                    with self.lock:
                        if attempt == 1:
                            self.resets += 1
                        else:
                            self.lost += 1
                    continue
                with self.lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                break

    def __enter__(self) -> ClosedLoop:
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(4)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def answered(self) -> int:
        with self.lock:
            return sum(self.statuses.values())


def test_two_instances_share_the_port_and_each_has_its_admin_port(two_instances):
    gateway = two_instances
    first, second = (gateway.health(i) for i in range(2))
    assert first["pid"] != second["pid"]
    assert (first["instance"], second["instance"]) == (0, 1)
    assert first["supervisor"] == second["supervisor"] == gateway.process.pid
    # the kernel spreads connections over both: each instance proxies some of 40
    assert [invoke(gateway.port) for _ in range(40)] == [200] * 40
    sent = [sum(f["requests"] for f in http.get_json(gateway.admin_url(i) + "/load").values()) for i in range(2)]
    assert sum(sent) == 40 and min(sent) > 0, sent
    # each registered itself in the state dir, with the URL of its admin port
    records = gateway.records()
    assert {pid: r["admin_url"] for pid, r in records.items()} == {
        first["pid"]: gateway.admin_url(0), second["pid"]: gateway.admin_url(1)}
    assert {r["port"] for r in records.values()} == {gateway.port}


def test_a_killed_instance_is_back_within_a_second_and_no_request_is_lost(two_instances):
    gateway = two_instances
    victim, survivor = gateway.pids()
    with ClosedLoop(gateway.port) as client:
        time.sleep(1.0)
        before = client.answered()
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while (gateway.health(0) or {}).get("pid") in (None, victim):
            assert time.monotonic() - killed < 5, "instance 0 did not come back"
            time.sleep(0.02)
        back_after = time.monotonic() - killed
        time.sleep(1.0)  # traffic goes on through both again
    replacement = gateway.health(0)["pid"]
    assert replacement != victim and gateway.health(1)["pid"] == survivor
    assert back_after < 1.0, f"instance 0 took {back_after:.2f} s to come back"
    assert client.lost == 0, f"{client.lost} requests lost after one retry ({client.resets} resets)"
    assert set(client.statuses) == {200}, client.statuses
    assert before > 20 and client.answered() > before + 20  # it kept serving through the kill
    # the dead instance's record is gone, the replacement's is there
    assert set(gateway.records()) == {replacement, survivor}
    print(f"instance back after {back_after * 1000:.0f} ms; {client.answered()} answers, "
          f"{client.resets} reset on the first try, {client.lost} lost")


def test_sigterm_stops_every_instance_cleanly(two_instances):
    gateway = two_instances
    pids = gateway.pids()
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(15) == 0
    deadline = time.monotonic() + 5
    while any(pid_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_running(p) for p in pids)
    assert gateway.records() == {}  # a clean stop unregisters
    with pytest.raises(OSError):
        invoke(gateway.port, timeout=1)


def test_instances_die_with_their_supervisor(two_instances):
    """A supervisor killed with -9 leaves no gateway behind (the kernel's parent-death signal)."""
    gateway = two_instances
    pids = gateway.pids()
    gateway.process.kill()
    gateway.process.wait(5)
    deadline = time.monotonic() + 5
    while any(pid_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_running(p) for p in pids)


def test_a_taken_admin_port_is_one_line_before_any_instance_starts(tmp_path, backend):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "mlops_toolkit.cli", "gateway", "--instances", "2",
                               "--state-dir", str(tmp_path), "--port", str(free_ports(1)), "--admin-port",
                               str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: gateway admin port 127.0.0.1:{port} is already in use; pick another with --admin-port "
        "(instance i listens on it + i)")
