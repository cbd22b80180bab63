"""The gateway in-process: every check and limit a caller can meet, each in well under a second.

The gateway is the real one (:class:`Gateway` served through :func:`listener.listen`, as
``mlops gateway`` serves it) on a free port, reading a ``routes.json`` each test writes. The
backends are FAKES: small aiohttp apps answering ``/invocations`` and ``/ping`` with the
behaviour a test sets (held on a gate, hanging, refusing, cutting an answer off, answering
too much); no model is served. Callers are aiohttp clients or raw sockets (for what a client
library would not send). Each test runs its own event loop (``asyncio.run``: no plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from aiohttp import web
from mlops_autoserve import routetable
from mlops_autoserve.gateway import Gateway, listen
from mlops_autoserve.gateway.limits import LimitCounter
from mlops_autoserve.gateway.listener import ListenLimits, guards_for
from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.routetable import (
    Replica,
    RouteEntry,
    RouteTable,
    ShadowTarget,
    table_path,
)
from mlops_autoserve.settings import GatewaySettings
from prometheus_client.parser import text_string_to_metric_families

TEST_TIMEOUT_S = 20.0
MB = 1024 * 1024


def in_loop(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop, bounded in time."""

    @functools.wraps(test)
    def run(*args, **kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), TEST_TIMEOUT_S))

    return run


async def until(check: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# -- the fake backend ------------------------------------------------------------------------
class FakeBackend:
    """A FAKE model server: ``/invocations`` answers with ``self.answer`` (swappable), ``/ping``
    with ``self.ping_status``. ``held`` answers wait on ``gate``; ``stop`` opens it."""

    def __init__(self) -> None:
        self.calls = 0  # /invocations requests received
        self.in_progress = 0
        self.ping_status = 200
        self.gate = asyncio.Event()
        self.answer: Callable[[web.Request], Awaitable[web.StreamResponse]] = self.echo
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeBackend:
        app = web.Application(client_max_size=64 * MB)
        app.router.add_post("/invocations", self._invocations)
        app.router.add_get("/ping", self._ping)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _invocations(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.in_progress += 1
        try:
            return await self.answer(request)
        finally:
            self.in_progress -= 1

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"ping": self.ping_status}, status=self.ping_status)

    # behaviours ------------------------------------------------------------------------
    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"predictions": [len(body)]})

    async def held(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self.gate.wait()
        return web.json_response({"predictions": [len(body)]})

    async def hang(self, request: web.Request) -> web.Response:
        await self.gate.wait()  # far longer than the gateway's request timeout
        return web.json_response({"predictions": ["late"]})


@contextlib.asynccontextmanager
async def backends(n: int = 1):
    started = [await FakeBackend().start() for _ in range(n)]
    try:
        yield started
    finally:
        for backend in started:
            await backend.stop()


def refused_url() -> str:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the gateway -----------------------------------------------------------------------------
def route(model: str, alias: str, *urls: str, version: int = 1, state: str = "ready") -> RouteEntry:
    return RouteEntry(model=model, alias=alias, desired_version=version, version=version if urls else None,
                      state=state, since=time.time(),
                      replicas=tuple(Replica(url, f"fake-{i}", i) for i, url in enumerate(urls)))


def publish(state_dir: Path, *routes: RouteEntry, serial: int = 1) -> None:
    routetable.write(table_path(state_dir), RouteTable(serial, time.time(), routes))


@dataclass
class Running:
    gateway: Gateway
    url: str  # the data port
    admin: str  # the admin port
    port: int
    session: aiohttp.ClientSession

    async def post(self, model: str, alias: str, data: object = b"{}", **kwargs) -> tuple[int, dict, bytes]:
        async with self.session.post(f"{self.url}/serve/{model}/{alias}/invocations", data=data, **kwargs) as r:
            return r.status, dict(r.headers), await r.read()

    async def get_admin(self, page: str, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.admin + page, headers=headers) as r:
            return r.status, await r.read()

    async def metrics(self, token: str | None = None) -> list:
        status, body = await self.get_admin("/metrics", token)
        assert status == 200
        return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]

    async def limit_hits(self, limit: str) -> float:
        return next(s.value for s in await self.metrics()
                    if s.name == "autoserve_gateway_limits_total" and s.labels["limit"] == limit)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def gateway(state_dir: Path, *routes: RouteEntry, **settings):
    publish(state_dir, *routes)
    settings = {"readmit_interval": 0.1, **settings}
    gw = Gateway(GatewaySettings(state_dir=state_dir, port=18000, admin_port=18001, **settings))
    data = await listen(gw.app(), "127.0.0.1", 0, "gateway", "--port", guards=gw.guards)
    admin = await listen(gw.admin_app(), "127.0.0.1", 0, "gateway admin", "--admin-port")
    port = data.server.sockets[0].getsockname()[1]
    admin_port = admin.server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(gw, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", port, session)
    finally:
        await admin.cleanup()
        await data.cleanup()


# -- raw HTTP --------------------------------------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """The first status line, headers and body the gateway sent on a raw connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    first, *lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return first, headers, body


def head(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: gateway", *extra]) + "\r\n\r\n").encode()


# -- the checks before a backend is asked ----------------------------------------------------
@in_loop
async def test_a_declared_body_over_max_body_gets_413_before_it_is_sent(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_body_mb=0.01) as gw:
        reader, writer = await gw.connect()
        writer.write(head("/serve/m/prod/invocations", "Content-Length: 50000", "Content-Type: application/json"))
        await writer.drain()
        first, _, body = await asyncio.wait_for(read_response(reader), 2.0)  # the body was never sent
        writer.close()
        assert first.startswith("HTTP/1.1 413"), first
        assert b"0.01 MB" in body
        status, _, _ = await gw.post("m", "prod", b"x" * 10_000)  # under the cap
        assert status == 200
        assert b.calls == 1
        assert await gw.limit_hits("body_size") == 1


@in_loop
async def test_a_chunked_body_over_max_body_gets_413(tmp_path):
    async def chunks():
        for _ in range(5):
            yield b"x" * 4096  # 20 KB, no Content-Length

    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_body_mb=0.01) as gw:
        status, _, body = await gw.post("m", "prod", chunks())
        assert status == 413, body
        assert b.calls == 0
        assert await gw.limit_hits("body_size") == 1


@in_loop
async def test_a_route_with_max_inflight_requests_in_flight_answers_429(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_inflight=2) as gw:
        b.answer = b.held
        first = [asyncio.create_task(gw.post("m", "prod")) for _ in range(2)]
        await until(lambda: b.in_progress == 2, "two requests at the backend")
        status, headers, body = await gw.post("m", "prod")
        assert (status, headers.get("Retry-After")) == (429, "1"), body
        b.gate.set()
        assert [r[0] for r in await asyncio.gather(*first)] == [200, 200]
        assert (await gw.post("m", "prod"))[0] == 200  # the slots are back
        assert b.calls == 3


@in_loop
async def test_a_route_with_nothing_ready_answers_503(tmp_path):
    starting = route("m", "prod", state="starting")
    async with gateway(tmp_path, starting) as gw:
        status, _, body = await gw.post("m", "prod")
        assert status == 503
        assert b'"state": "starting"' in body


@in_loop
async def test_an_unknown_route_is_404_counted_under_unknown(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url)) as gw:
        for name in ("nope", "other", "m"):
            status, _, _ = await gw.post(name, "staging")
            assert status == 404
        # Also when the caller sends Expect: 100-continue (curl does for large bodies).
        reader, writer = await gw.connect()
        writer.write(head("/serve/third/prod/invocations", "Content-Length: 10", "Expect: 100-continue"))
        first, _, _ = await asyncio.wait_for(read_response(reader), 2.0)
        writer.close()
        assert first.startswith("HTTP/1.1 404"), first
        samples = [s for s in await gw.metrics() if s.name == "autoserve_requests_total"]
        assert {(s.labels["model"], s.labels["alias"], s.labels["code"]): s.value for s in samples} == {
            ("_unknown", "_unknown", "404"): 4}
        assert b.calls == 0


@in_loop
async def test_bearer_token_on_the_data_port(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), auth_token="s3cret") as gw:
        status, headers, _ = await gw.post("m", "prod")
        assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer")
        assert (await gw.post("m", "prod", headers={"Authorization": "Bearer wrong"}))[0] == 401
        assert (await gw.post("m", "prod", headers={"Authorization": "s3cret"}))[0] == 401
        assert (await gw.post("m", "prod", headers={"Authorization": "Bearer s3cret"}))[0] == 200
        assert b.calls == 1


@in_loop
async def test_admin_pages_need_the_admin_token_but_health(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), admin_token="adm1n") as gw:
        for page in ("/endpoints", "/inflight", "/load", "/metrics", "/stats?model=m&alias=prod&version=1"):
            assert (await gw.get_admin(page))[0] == 401, page
            assert (await gw.get_admin(page, "wrong"))[0] == 401, page
            assert (await gw.get_admin(page, "adm1n"))[0] == 200, page
        status, body = await gw.get_admin("/health")
        assert status == 200 and b'"status": "ok"' in body
        status, body = await gw.get_admin("/endpoints", "adm1n")
        assert b.url.encode() in body


@in_loop
async def test_expect_100_continue_is_only_answered_for_a_request_that_would_be_taken(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), auth_token="s3cret") as gw:
        reader, writer = await gw.connect()
        writer.write(head("/serve/m/prod/invocations", "Content-Length: 2", "Expect: 100-continue",
                          "Authorization: Bearer wrong"))
        first, headers, _ = await asyncio.wait_for(read_response(reader), 2.0)
        assert first.startswith("HTTP/1.1 401"), first  # the first line: no "100 Continue" before it
        assert headers.get("connection") == "close"
        writer.close()

        reader, writer = await gw.connect()  # the right token: invited, then answered
        writer.write(head("/serve/m/prod/invocations", "Content-Length: 2", "Expect: 100-continue",
                          "Authorization: Bearer s3cret"))
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        first, _, _ = await asyncio.wait_for(read_response(reader), 2.0)
        writer.close()
        assert first.startswith("HTTP/1.1 200"), first
        assert b.calls == 1


@in_loop
async def test_an_invalid_host_header_gets_400_and_reaches_no_backend(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url)) as gw:
        for host in ("a b", "[::1", "gw/evil", "gw:80x"):
            for expect in ((), ("Expect: 100-continue",)):
                reader, writer = await gw.connect()
                writer.write(head("/serve/m/prod/invocations", "Content-Length: 2", *expect).replace(
                    b"Host: gateway", f"Host: {host}".encode()) + (b"" if expect else b"{}"))
                first, _, body = await asyncio.wait_for(read_response(reader), 2.0)
                writer.close()
                assert first.startswith("HTTP/1.1 400"), (host, expect, first)
                assert b"Host" in body
        for host in ("gw", "gw:8000", "127.0.0.1:8000", "[::1]:8000", "my-gw.example.com"):
            status, _, _ = await gw.post("m", "prod", headers={"Host": host})
            assert status == 200, host
        assert b.calls == 5


# -- the body: budget, timeout ---------------------------------------------------------------
@in_loop
async def test_bodies_past_max_inflight_mb_get_503_with_retry_after(tmp_path):
    upload = b"x" * int(0.6 * MB)
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_inflight_mb=1,
                                           max_body_mb=1) as gw:
        b.answer = b.held
        first = asyncio.create_task(gw.post("m", "prod", upload))
        await until(lambda: b.in_progress == 1, "the first upload held at the backend")
        status, headers, body = await gw.post("m", "prod", upload)  # 0.6 + 0.6 MB > 1 MB: refused unread
        assert (status, headers.get("Retry-After")) == (503, "1"), body

        async def chunked():
            for _ in range(6):
                yield b"x" * (MB // 10)

        status, headers, _ = await gw.post("m", "prod", chunked())  # refused once its chunks pass the budget
        assert (status, headers.get("Retry-After")) == (503, "1")
        b.gate.set()
        assert (await first)[0] == 200
        assert (await gw.post("m", "prod", upload))[0] == 200  # the budget is free again
        assert gw.gateway.budget.used == 0
        assert b.calls == 2
        assert await gw.limit_hits("body_budget") == 2


@in_loop
async def test_a_stalled_body_gets_408_and_never_holds_the_routes_slot(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_inflight=1,
                                           client_body_timeout=0.5) as gw:
        reader, writer = await gw.connect()
        started = time.monotonic()
        writer.write(head("/serve/m/prod/invocations", "Content-Length: 1000") + b"{")
        await writer.drain()
        await asyncio.sleep(0.1)
        status, _, _ = await gw.post("m", "prod")  # the only slot of the route is free meanwhile
        assert status == 200
        assert time.monotonic() - started < 0.5, "the normal caller was answered while the upload stalled"
        first, headers, _ = await asyncio.wait_for(read_response(reader), 2.0)
        waited = time.monotonic() - started
        assert first.startswith("HTTP/1.1 408"), first
        assert 0.45 <= waited < 1.5, waited
        assert headers.get("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 4.0) == b""  # closed
        writer.close()
        assert b.calls == 1
        assert await gw.limit_hits("body_timeout") == 1


# -- the backend: timeout, ejection, retry, answer cap ---------------------------------------
@in_loop
async def test_a_hanging_backend_gets_504_is_ejected_and_comes_back_once_ping_answers(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), request_timeout=0.3) as gw:
        b.answer, b.ping_status = b.hang, 503
        started = time.monotonic()
        status, headers, body = await gw.post("m", "prod")
        assert (status, headers.get("X-Model-Version")) == (504, "1"), body
        assert time.monotonic() - started < 1.0

        async def replica_state() -> str:
            _, body = await gw.get_admin("/endpoints")
            return json.loads(body)[0]["replicas"][0]["state"]

        assert await replica_state() == "ejected"
        await asyncio.sleep(0.5)  # several /ping rounds, each 503
        assert await replica_state() == "ejected"
        b.ping_status, b.answer = 200, b.echo
        deadline = time.monotonic() + 2.0
        while await replica_state() != "ready":
            assert time.monotonic() < deadline, "not re-admitted after /ping answered 200"
            await asyncio.sleep(0.05)
        assert (await gw.post("m", "prod"))[0] == 200
        ejections = [s.value for s in await gw.metrics() if s.name == "autoserve_replica_ejections_total"]
        assert ejections == [1]


@in_loop
async def test_a_refused_connection_is_retried_on_another_replica(tmp_path):
    dead = refused_url()
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", dead, b.url)) as gw:
        statuses = [(await gw.post("m", "prod"))[0] for _ in range(10)]
        assert statuses == [200] * 10  # 0 failed
        assert b.calls == 10
        _, body = await gw.get_admin("/endpoints")
        states = {r["url"]: r["state"] for r in json.loads(body)[0]["replicas"]}
        assert states == {dead: "ejected", b.url: "ready"}  # after 3 refusals in a row


@in_loop
async def test_an_answer_cut_off_mid_body_is_retried(tmp_path):
    async def cut_once(request: web.Request) -> web.StreamResponse:
        await request.read()
        if b.calls > 1:
            return await b.echo(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"predictions": [')  # then the process "dies"
        request.transport.close()
        return response

    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url)) as gw:  # its only replica
        b.answer = cut_once
        status, _, body = await gw.post("m", "prod", b"abc")
        assert (status, body) == (200, b'{"predictions": [3]}')
        assert b.calls == 2


@in_loop
async def test_an_answer_over_max_response_mb_gets_502(tmp_path):
    big = b"x" * 50_000  # over 0.01 MB

    async def declared(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(big), 5000):
            await response.write(big[i:i + 5000])
        await response.write_eof()
        return response

    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_response_mb=0.01) as gw:
        for answer in (declared, chunked):
            b.answer = answer
            status, headers, body = await gw.post("m", "prod")
            assert (status, headers.get("X-Model-Version")) == (502, "1"), answer.__name__
            assert b"answer over" in body and len(body) < 1000
        assert b.calls == 2  # not retried: a too large answer is the backend's answer
        assert await gw.limit_hits("response_size") == 2
        b.answer = b.echo
        assert (await gw.post("m", "prod"))[0] == 200


@in_loop
async def test_answers_are_passed_on_as_the_caller_can_read_them(tmp_path):
    """The gateway does not pass on encodings: a backend that compresses when asked is not asked."""
    answer = {"predictions": list(range(500))}

    async def gzip_if_asked(request: web.Request) -> web.Response:
        await request.read()
        body = json.dumps(answer).encode()
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip",
                                                                   "Content-Type": "application/json"})
        return web.Response(body=body, content_type="application/json")

    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url)) as gw:
        b.answer = gzip_if_asked
        status, _, body = await gw.post("m", "prod", headers={"Accept-Encoding": "gzip"})
        assert status == 200
        assert json.loads(body) == answer


# -- the listener: header timeout, connection cap --------------------------------------------
@in_loop
async def test_a_request_head_that_does_not_arrive_is_cut_after_the_header_timeout(tmp_path):
    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), header_timeout=0.5) as gw:
        reader, writer = await gw.connect()
        started = time.monotonic()
        writer.write(b"POST /serve/m/pr")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 3.0) == b""
        assert 0.45 <= time.monotonic() - started < 1.5
        writer.close()
        assert await gw.limit_hits("header_timeout") == 1
        # A connection answered and idle is left to the keep-alive timeout, not cut.
        for _ in range(2):
            assert (await gw.post("m", "prod"))[0] == 200
            await asyncio.sleep(0.7)
        assert await gw.limit_hits("header_timeout") == 1


@in_loop
async def test_past_max_connections_a_new_connection_gets_a_fast_503(tmp_path):
    def burst() -> list[socket.socket]:  # blocking connects: the gateway accepts them in one go
        return [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(40)]

    async with backends() as (b,), gateway(tmp_path, route("m", "prod", b.url), max_connections=16) as gw:
        idle = await asyncio.to_thread(burst)
        deadline = time.monotonic() + 3
        while await gw.limit_hits("connections") < 24:
            assert time.monotonic() < deadline, "the burst was not all accepted"
            await asyncio.sleep(0.01)
        assert len(gw.gateway.guards.open) == 16  # exactly the cap, a burst included
        for _ in range(3):
            reader, writer = await gw.connect()
            writer.write(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
            first, headers, body = await asyncio.wait_for(read_response(reader), 1.0)
            assert first.startswith("HTTP/1.1 503") and headers["retry-after"] == "1", first
            assert b"16 connections" in body
            writer.close()
        for sock in idle:
            sock.close()
        await until(lambda: not gw.gateway.guards.open, "the idle connections gone")
        assert (await gw.post("m", "prod"))[0] == 200
        assert await gw.limit_hits("connections") == 24 + 3


@in_loop
async def test_an_answer_the_caller_stops_reading_is_cut_after_the_send_timeout():
    """The listener alone, around a small app: the gateway's send timeout is not a setting."""
    answer = b"x" * (16 * MB)
    app = web.Application()
    app.router.add_get("/big", lambda request: _answer(answer))
    metrics = GatewayMetrics()
    counter = LimitCounter(metrics)

    def cut() -> float | None:
        return metrics.registry.get_sample_value("autoserve_gateway_limits_total", {"limit": "send_timeout"})

    guards = guards_for(app, ListenLimits(send_timeout=0.5), counter)
    listener = await listen(app, "127.0.0.1", 0, "test", "--port", guards=guards)
    port = listener.server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 * 1024)
        writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")  # then nothing more is read
        await until(lambda: not guards.open, "the stalled answer cut", timeout=4.0)
        assert cut() == 1
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # slow, but reading: not cut
        writer.write(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        got, started = 0, time.monotonic()
        while got < len(answer):
            got += len(await reader.read(MB))
            await asyncio.sleep(0.02)
        assert time.monotonic() - started > 0.5  # slower than the send timeout over all
        writer.close()
        assert cut() == 1
    finally:
        await listener.cleanup()


async def _answer(body: bytes) -> web.Response:
    return web.Response(body=body)


# -- what is counted follows the route table -------------------------------------------------
@in_loop
async def test_series_of_a_route_removed_from_the_table_disappear_from_metrics(tmp_path):
    async with backends(2) as (a, b), gateway(tmp_path, route("ma", "prod", a.url), route("mb", "prod", b.url)) as gw:
        assert (await gw.post("ma", "prod"))[0] == 200
        assert (await gw.post("mb", "prod"))[0] == 200

        def models(samples: list) -> set[str]:
            return {s.labels["model"] for s in samples
                    if s.name.startswith(("autoserve_requests", "autoserve_request_duration"))}

        def serial(samples: list) -> float:
            return next(s.value for s in samples if s.name == "autoserve_route_table_serial")

        samples = await gw.metrics()
        assert (models(samples), serial(samples)) == ({"ma", "mb"}, 1)
        publish(tmp_path, route("ma", "prod", a.url), serial=2)
        await until(lambda: gw.gateway.table.table.serial == 2, "the new table loaded")
        await asyncio.sleep(0.05)
        samples = await gw.metrics()
        assert (models(samples), serial(samples)) == ({"ma"}, 2)
        _, body = await gw.get_admin("/load")
        assert b.url.encode() not in body and a.url.encode() in body


@in_loop
async def test_shadow_series_go_when_no_route_copies_to_that_shadow_any_more(tmp_path):
    """Shadow metrics follow the table too: once the route stops copying to its shadow, the
    shadow's series leave /metrics."""
    async with backends(2) as (a, s):
        shadowed = replace(route("ma", "prod", a.url),
                           shadow=ShadowTarget("challenger", 2, 100.0, "auto", (Replica(s.url, "s"),)))
        async with gateway(tmp_path, shadowed) as gw:
            assert (await gw.post("ma", "prod"))[0] == 200

            def shadow_series(samples: list) -> set[tuple[str, str]]:
                return {(x.labels["model"], x.labels["alias"]) for x in samples
                        if x.name.startswith("autoserve_shadow_")}

            await until(lambda: s.calls >= 1, "the shadow copy sent")
            await asyncio.sleep(0.05)
            assert shadow_series(await gw.metrics()) == {("ma", "challenger")}
            publish(tmp_path, route("ma", "prod", a.url), serial=2)
            await until(lambda: gw.gateway.table.table.serial == 2, "the new table loaded")
            await asyncio.sleep(0.05)
            assert shadow_series(await gw.metrics()) == set()
