"""A real gateway process (``mlops gateway``) against hostile and careless callers.

What a caller can do without a model's help: hold sockets with half a request head, stall
uploads, send bodies or headers far over the limits, odd paths and Host headers, thousands
of unknown routes, more connections than the cap; and what a backend can do: answer 1 GB.
Each test checks the gateway keeps answering normal callers, cuts what it must when it
must, and keeps its memory (VmRSS of the process) and its /metrics flat.

The backend is a FAKE: this very file run as a script (``python test_hostile.py backend``),
an aiohttp app in a process of its own answering ``/{kind}/invocations`` (``ok``: a small
JSON answer; ``huge``: 1 GB streamed without Content-Length; ``huge-declared``: 1 GB with
it). The figures measured are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]
HEADER_TIMEOUT_S = 10.0  # the gateway's default (not an option)
BODY_TIMEOUT_S = 2.0  # --client-body-timeout


# -- the fake backend (this file as a script) ------------------------------------------------
def backend_main() -> None:
    """A FAKE model server on a free port; prints the port, serves until killed."""
    from aiohttp import web

    sent = {"huge": 0, "huge-declared": 0}

    async def invocations(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        kind = request.match_info["kind"]
        if kind == "ok":
            return web.json_response({"predictions": [len(body)]})
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if kind == "huge-declared":
            response.content_length = 1024 * MB
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"7" * MB
        sent[kind] = 0
        try:
            for _ in range(1024):
                await response.write(chunk)
                sent[kind] += 1
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the gateway hung up: what the test wants
            pass
        return response

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"sent_mb": sent})

    async def main() -> None:
        app = web.Application(client_max_size=128 * MB)
        app.router.add_post("/{kind}/invocations", invocations)
        app.router.add_get("/{kind}/ping", ping)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- processes -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    """Start VmHWM (the peak RSS) again from the current RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    port: int
    admin_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def start_gateway(state_dir: Path, log: Path, *options: str) -> GatewayProcess:
    port, admin_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_GATEWAY_") and k != "APP_DB_URL"}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_toolkit.cli", "gateway", "--state-dir", str(state_dir), "--port", str(port),
             "--admin-port", str(admin_port), *options], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    gateway = GatewayProcess(process, port, admin_port, log)
    deadline = time.monotonic() + 30
    while True:
        assert gateway.alive(), f"the gateway exited:\n{gateway.log_tail()}"
        try:
            with socket.create_connection(("127.0.0.1", admin_port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b'"table_serial": 1' in s.recv(65536):
                    return gateway
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the gateway did not start:\n{gateway.log_tail()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def backend_url() -> Iterator[str]:
    process = subprocess.Popen([sys.executable, __file__, "backend"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(5)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory, backend_url) -> Path:
    from mlops_autoserve import routetable
    from mlops_autoserve.routetable import Replica, RouteEntry, RouteTable, table_path

    state = tmp_path_factory.mktemp("hostile-state")
    routes = tuple(RouteEntry(model=kind, alias="prod", desired_version=1, version=1, state="ready", since=time.time(),
                              replicas=(Replica(f"{backend_url}/{kind}", "fake", 0),))
                   for kind in ("ok", "huge", "huge-declared"))
    routetable.write(table_path(state), RouteTable(1, time.time(), routes))
    return state


@pytest.fixture(scope="module")
def gateway(state_dir) -> Iterator[GatewayProcess]:
    running = start_gateway(state_dir, state_dir / "gateway.log", "--client-body-timeout", str(BODY_TIMEOUT_S))
    try:
        yield running
        assert running.alive(), f"the gateway died:\n{running.log_tail()}"
    finally:
        stop(running.process)


# -- callers ---------------------------------------------------------------------------------
def report(what: str, **figures: object) -> None:
    print(f"\n[hostile] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


async def status_of(reader: asyncio.StreamReader, timeout: float = 5.0) -> int:
    """The status of the answer on a raw connection."""
    line = await asyncio.wait_for(reader.readline(), timeout)
    assert line.startswith(b"HTTP/1."), line
    return int(line.split()[1])


async def raw(gateway: GatewayProcess, request: bytes, timeout: float = 5.0) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(request)
        await writer.drain()
        return await status_of(reader, timeout)
    finally:
        writer.close()


async def normal_call(gateway: GatewayProcess, model: str = "ok") -> tuple[int, float]:
    """A well-behaved caller on a connection of its own: status and seconds."""
    started = time.monotonic()
    body = b'{"inputs": [[1, 2]]}'
    status = await raw(gateway, (f"POST /serve/{model}/prod/invocations HTTP/1.1\r\nHost: gw\r\n"
                                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                                 f"Connection: close\r\n\r\n").encode() + body)
    return status, time.monotonic() - started


def admin_get(gateway: GatewayProcess, page: str) -> str:
    import urllib.request

    with urllib.request.urlopen(gateway.admin + page, timeout=5) as r:
        return r.read().decode()


def limit_hits(gateway: GatewayProcess, limit: str) -> float:
    for line in admin_get(gateway, "/metrics").splitlines():
        if line.startswith(f'autoserve_gateway_limits_total{{limit="{limit}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"no limit {limit}")


# -- slow and stalled callers ----------------------------------------------------------------
def test_slow_header_sockets_do_not_slow_normal_callers_and_are_cut(gateway):
    async def scenario() -> tuple[list[float], list[float]]:
        held = []
        for _ in range(300):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"POST /serve/ok/prod/invoca")  # half a request line, then nothing
            held.append((time.monotonic(), reader, writer))
        await asyncio.gather(*(w.drain() for _, _, w in held))
        latencies = []
        for _ in range(10):  # over the first ~5 s: the sockets are all open meanwhile
            status, seconds = await normal_call(gateway)
            assert status == 200
            latencies.append(seconds)
            await asyncio.sleep(0.5)

        async def cut_after(opened: float, reader: asyncio.StreamReader) -> float:
            rest = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + 5)
            assert rest == b"", rest  # closed without an answer
            return time.monotonic() - opened

        cut = await asyncio.gather(*(cut_after(t, r) for t, r, _ in held))
        for _, _, writer in held:
            writer.close()
        return latencies, cut

    before = limit_hits(gateway, "header_timeout")
    latencies, cut = asyncio.run(scenario())
    report("300 slow-header sockets", normal_max_s=f"{max(latencies):.3f}", normal_mean_s=f"{sum(latencies)/10:.3f}",
           cut_min_s=f"{min(cut):.2f}", cut_max_s=f"{max(cut):.2f}")
    assert max(latencies) < 1.0
    assert HEADER_TIMEOUT_S - 0.5 <= min(cut) and max(cut) <= HEADER_TIMEOUT_S + 2
    assert limit_hits(gateway, "header_timeout") - before == 300


def test_stalled_uploads_do_not_hold_the_route_and_are_cut_with_408(gateway):
    async def scenario() -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        stalled = []
        for _ in range(256):
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")  # one byte of 1000
            stalled.append((time.monotonic(), reader, writer))
        await asyncio.gather(*(w.drain() for _, _, w in stalled))
        await asyncio.sleep(0.2)
        normal = [await normal_call(gateway) for _ in range(10)]

        async def answer(opened: float, reader: asyncio.StreamReader) -> tuple[int, float]:
            status = await status_of(reader, BODY_TIMEOUT_S + 5)
            return status, time.monotonic() - opened

        cut = await asyncio.gather(*(answer(t, r) for t, r, _ in stalled))
        for _, _, writer in stalled:
            writer.close()
        return normal, cut

    before = limit_hits(gateway, "body_timeout")
    normal, cut = asyncio.run(scenario())
    waited = [seconds for _, seconds in cut]
    report("256 stalled uploads on one route", normal_ok=f"{sum(s == 200 for s, _ in normal)}/10",
           normal_max_s=f"{max(t for _, t in normal):.3f}", cut_min_s=f"{min(waited):.2f}",
           cut_max_s=f"{max(waited):.2f}")
    assert [s for s, _ in normal] == [200] * 10
    assert {s for s, _ in cut} == {408}
    assert BODY_TIMEOUT_S - 0.1 <= min(waited) and max(waited) <= BODY_TIMEOUT_S + 2
    assert limit_hits(gateway, "body_timeout") - before == 256


# -- too much: bodies, answers ---------------------------------------------------------------
def test_a_70_mb_chunked_body_gets_413_and_memory_stays_flat(gateway):
    async def scenario() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (MB, b"7" * MB)
        answer = asyncio.create_task(status_of(reader, 30))
        try:
            for _ in range(70):
                if answer.done():
                    break
                writer.write(chunk)
                await writer.drain()
            else:
                writer.write(b"0\r\n\r\n")
            return await answer
        except ConnectionError:  # cut while sending: the answer is read below
            return await answer
        finally:
            writer.close()

    before = rss_mb(gateway.pid)
    reset_peak(gateway.pid)
    started = time.monotonic()
    status = asyncio.run(scenario())
    seconds = time.monotonic() - started
    time.sleep(0.5)
    after, peak = rss_mb(gateway.pid), rss_mb(gateway.pid, "VmHWM")
    report("70 MB chunked body", status=status, seconds=f"{seconds:.2f}", rss_before_mb=f"{before:.1f}",
           rss_after_mb=f"{after:.1f}", rss_peak_mb=f"{peak:.1f}")
    assert status == 413
    assert after - before < 20
    assert peak - before < 64 + 32  # at most --max-body-mb (64) held, never the 70 MB
    assert normal_call_ok(gateway)


@pytest.mark.parametrize("kind", ["huge", "huge-declared"])
def test_a_1_gb_backend_answer_gets_502_and_memory_stays_flat(gateway, backend_url, kind):
    before = rss_mb(gateway.pid)
    reset_peak(gateway.pid)
    body = b"{}"
    started = time.monotonic()
    status = asyncio.run(raw(gateway, (f"POST /serve/{kind}/prod/invocations HTTP/1.1\r\nHost: gw\r\n"
                                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body, timeout=30))
    seconds = time.monotonic() - started
    time.sleep(0.5)
    after, peak = rss_mb(gateway.pid), rss_mb(gateway.pid, "VmHWM")
    import urllib.request

    with urllib.request.urlopen(backend_url + "/stats", timeout=5) as r:
        sent = json.load(r)["sent_mb"][kind]
    report(f"1 GB answer ({kind})", status=status, seconds=f"{seconds:.2f}", backend_sent_mb=sent,
           rss_before_mb=f"{before:.1f}", rss_after_mb=f"{after:.1f}", rss_peak_mb=f"{peak:.1f}")
    assert status == 502
    assert sent < 1024  # the gateway hung up long before the end
    assert after - before < 20
    assert peak - before < 64 + 32  # at most --max-response-mb (64) held
    assert normal_call_ok(gateway)


def normal_call_ok(gateway: GatewayProcess) -> bool:
    status, _ = asyncio.run(normal_call(gateway))
    return status == 200 and gateway.alive()


# -- odd requests ----------------------------------------------------------------------------
ODD_REQUESTS = {
    "20,000-character path segment": b"POST /serve/" + b"a" * 20_000 + b"/prod/invocations HTTP/1.1\r\nHost: gw\r\n"
                                     b"Content-Length: 2\r\n\r\n{}",
    "encoded ..": b"POST /serve/%2e%2e/x/invocations HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}",
    "encoded ../ to the admin pages": b"GET /serve/%2e%2e/%2e%2e/metrics HTTP/1.1\r\nHost: gw\r\n\r\n",
    "no Host": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    "two Host headers": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}",
    "Host with a space": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: a b\r\nContent-Length: 2\r\n\r\n{}",
    "Host half an IPv6": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: [::1\r\nContent-Length: 2\r\n\r\n{}",
    "Host of control bytes": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: \x01\x7f\xff\r\nContent-Length: 2\r\n\r\n{}",
    "1,000 headers": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: gw\r\n"
                     + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"Content-Length: 2\r\n\r\n{}",
    "a 100 KB header": b"POST /serve/ok/prod/invocations HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"v" * 100_000
                       + b"\r\nContent-Length: 2\r\n\r\n{}",
}


def test_odd_paths_hosts_and_header_bombs_get_4xx_without_a_crash(gateway):
    async def scenario() -> dict[str, int]:
        return {what: await raw(gateway, request) for what, request in ODD_REQUESTS.items()}

    statuses = asyncio.run(scenario())
    report("odd requests", **{what.replace(" ", "_"): status for what, status in statuses.items()})
    assert all(400 <= status < 500 for status in statuses.values()), statuses
    assert normal_call_ok(gateway)


def test_twenty_thousand_unknown_routes_leave_metrics_and_memory_flat(gateway):
    async def scenario() -> list[int]:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            async def call(i: int) -> int:
                async with session.post(f"{gateway.url}/serve/m{i}/a{i}/invocations", data=b"{}") as r:
                    await r.read()
                    return r.status

            statuses = []
            for start in range(0, 20_000, 1000):
                statuses += await asyncio.gather(*(call(i) for i in range(start, start + 1000)))
            return statuses

    asyncio.run(raw(gateway, b"POST /serve/warm/up/invocations HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n"))
    lines_before, rss_before = len(admin_get(gateway, "/metrics").splitlines()), rss_mb(gateway.pid)
    started = time.monotonic()
    statuses = asyncio.run(scenario())
    seconds = time.monotonic() - started
    lines_after, rss_after = len(admin_get(gateway, "/metrics").splitlines()), rss_mb(gateway.pid)
    report("20,000 unknown routes", seconds=f"{seconds:.1f}", rps=f"{20_000 / seconds:.0f}",
           metrics_lines_before=lines_before, metrics_lines_after=lines_after, rss_before_mb=f"{rss_before:.1f}",
           rss_after_mb=f"{rss_after:.1f}")
    assert set(statuses) == {404}
    assert abs(lines_after - lines_before) <= 3
    assert rss_after - rss_before < 20
    assert '"m1999"' not in admin_get(gateway, "/metrics")


# -- the connection cap ----------------------------------------------------------------------
def test_past_max_connections_a_new_connection_gets_a_fast_503(state_dir, tmp_path):
    capped = start_gateway(state_dir, tmp_path / "capped.log", "--max-connections", "64")

    async def scenario() -> tuple[int, float, list[tuple[int, float]]]:
        idle = [await asyncio.open_connection("127.0.0.1", capped.port) for _ in range(100)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        status = await raw(capped, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n", timeout=2)
        refused_in = time.monotonic() - started
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.3)
        return status, refused_in, [await normal_call(capped) for _ in range(10)]

    try:
        status, refused_in, normal = asyncio.run(scenario())
        refused = limit_hits(capped, "connections")
        report("--max-connections 64, 100 idle sockets", new_connection_status=status,
               new_connection_s=f"{refused_in:.3f}", refused_connections=refused,
               normal_after=f"{sum(s == 200 for s, _ in normal)}/10", normal_max_s=f"{max(t for _, t in normal):.3f}")
        assert status == 503
        assert refused_in < 0.5
        assert refused == 100 - 64 + 1
        assert [s for s, _ in normal] == [200] * 10
        assert capped.alive()
    finally:
        stop(capped.process)


if __name__ == "__main__" and sys.argv[1:] == ["backend"]:
    backend_main()
