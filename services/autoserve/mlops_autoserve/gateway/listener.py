"""The listener: accepts connections for an aiohttp app, with the limits aiohttp lacks.

aiohttp's server has no header timeout and no connection cap (an idle connection is kept
3630 s by default). Each accepted connection goes through a :class:`Guard` wrapped around
aiohttp's own protocol:

* past ``max_connections`` open connections a new one gets a fast 503 and is closed,
  never reaching aiohttp;
* a connection must send a complete request head within ``header_timeout`` of connecting
  or of its first byte after the last answer, else it is closed;
* an idle keep-alive connection is closed after ``keepalive_timeout`` (aiohttp's own timer);
* an answer the caller stops reading is cut once nothing of it was taken for ``send_timeout``
  (aiohttp has no write timeout: the answer would stay in memory as long as the caller wants).

``reuse_port`` lets several gateway processes listen on one port (``SO_REUSEPORT``): the
kernel spreads new connections among them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import time
from dataclasses import dataclass

from aiohttp import web

from mlops_autoserve.gateway.limits import LimitCounter
from mlops_toolkit.errors import MlopsError, ValidationError

log = logging.getLogger("autoserve.gateway")

SWEEP_EVERY_S = 0.5
DRAIN_TIMEOUT_S = 10.0
DRAIN_IDLE_S = 0.5


@dataclass(frozen=True)
class ListenLimits:
    max_connections: int = 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0  # as nginx's send_timeout: seconds an answer may make no progress


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class Guard(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the times the guards need outside."""

    __slots__ = ("guards", "make_inner", "inner", "transport", "busy", "waiting_since", "unsent", "stalled_since",
                 "idle_since")

    def __init__(self, guards: Guards, make_inner) -> None:  # noqa: ANN001 - aiohttp's protocol factory
        self.guards, self.make_inner = guards, make_inner
        self.inner: asyncio.Protocol | None = None  # None: refused (over the cap) or not open yet
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is being handled
        self.waiting_since: float | None = time.monotonic()  # waiting for a request head since
        self.unsent = 0  # bytes of answers waiting to be sent, at the last sweep
        self.stalled_since = self.waiting_since  # when they last went down (or were none)
        self.idle_since = self.waiting_since  # the last answer ended (or the connection opened) at

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The cap is checked here, not when the protocol is made: asyncio makes the protocols
        # of a burst of accepted connections before any of them is open, and all would pass.
        if not self.guards.admit():
            transport.write(self.guards.refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        self.inner = self.make_inner()
        self.guards.open[transport] = self
        self.inner.connection_made(transport)

    def send_stalled_for(self, now: float) -> float:
        """Seconds the answer being sent has made no progress (0: nothing waits to be sent)."""
        unsent = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if unsent == 0 or unsent < self.unsent:
            self.unsent, self.stalled_since = unsent, now
            return 0.0
        self.unsent = unsent
        return now - self.stalled_since

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if not self.busy and self.waiting_since is None:
            self.waiting_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is None:
            return
        self.guards.open.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class Guards:
    """Every open connection of one listener, and the sweep that cuts slow request heads and
    answers nobody takes."""

    def __init__(self, limits: ListenLimits, counter: LimitCounter | None) -> None:
        self.limits = limits
        self.counter = counter
        self.draining = False
        self.open: dict[asyncio.BaseTransport, Guard] = {}
        self.refusal = _refusal(f"the gateway has {limits.max_connections} connections open; retry")

    def protocol(self, make_inner) -> Guard:  # noqa: ANN001 - aiohttp's protocol factory
        return Guard(self, make_inner)

    def admit(self) -> bool:
        """Is there room for one more open connection? (A refusal is counted.)"""
        if len(self.open) < self.limits.max_connections:
            return True
        self._hit("connections")
        return False

    def began(self, request: web.BaseRequest) -> Guard | None:
        guard = self.open.get(request.transport)
        if guard is not None:
            guard.busy, guard.waiting_since = True, None
        return guard

    @staticmethod
    def ended(guard: Guard | None) -> None:
        if guard is not None:
            guard.busy, guard.idle_since = False, time.monotonic()

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            too_old = now - self.limits.header_timeout
            for transport, guard in list(self.open.items()):
                if not guard.busy and guard.waiting_since is not None and guard.waiting_since < too_old:
                    self._hit("header_timeout")
                    transport.close()
                elif guard.send_stalled_for(now) > self.limits.send_timeout:
                    self._hit("send_timeout")
                    transport.abort()  # close() would wait for the unsent answer to go out: never

    def _hit(self, reason: str) -> None:
        if self.counter is not None:
            self.counter.hit(reason)

    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
        guard = self.began(request)
        try:
            response = await handler(request)
            if self.draining:
                response.force_close()  # "Connection: close": the caller's next request goes to another instance
            return response
        finally:
            self.ended(guard)

    def close_idle(self, since: float) -> None:
        """Close the connections idle since ``since`` (no request, no byte of one)."""
        for transport, guard in list(self.open.items()):
            if not guard.busy and guard.waiting_since is None and guard.idle_since <= since:
                transport.close()


class Listener:
    """An aiohttp app served on one host:port through :class:`Guards`."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, guards: Guards, sweeper: asyncio.Task) -> None:
        self.runner, self.server, self.guards, self.sweeper = runner, server, guards, sweeper

    async def drain(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        """Stop taking connections and let the open ones finish: what a rolling restart needs.

        The listening socket closes first: with SO_REUSEPORT the kernel sends new connections
        to the other instances (and, with ``net.ipv4.tcp_migrate_req=1``, hands them the ones
        queued here). Answers still to come go out with ``Connection: close``; a connection
        idle for :data:`DRAIN_IDLE_S` (its caller sends nothing more) is closed. Returns when
        none is left, or after ``timeout``.
        """
        self.server.close()
        self.guards.draining = True
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = loop.time() + timeout
        while self.guards.open and loop.time() < deadline:
            now = time.monotonic()
            if now - started >= DRAIN_IDLE_S:  # every connection had that long to send a request
                self.guards.close_idle(now - DRAIN_IDLE_S)
            await asyncio.sleep(0.05)

    async def cleanup(self) -> None:
        self.sweeper.cancel()
        self.server.close()
        await self.runner.cleanup()


def guards_for(app: web.Application, limits: ListenLimits, counter: LimitCounter | None = None) -> Guards:
    """The guards of ``app``'s listener; call before the app starts (it adds a middleware)."""
    guards = Guards(limits, counter)
    app.middlewares.append(guards.middleware)
    return guards


async def listen(app: web.Application, host: str, port: int, what: str, option: str,
                 guards: Guards | None = None, reuse_port: bool = False) -> Listener:
    """Serve ``app`` on host:port; a taken port is a one-line error naming the option."""
    guards = guards or guards_for(app, ListenLimits())
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=guards.limits.keepalive_timeout, lingering_time=2.0)
    await runner.setup()
    try:
        sock = _socket(host, port, reuse_port)
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise ValidationError(f"{what} port {host}:{port} is already in use; pick another with {option}") from None
        raise MlopsError(f"cannot listen on {host}:{port}: {exc}") from None
    make_inner = runner.server
    server = await asyncio.get_running_loop().create_server(lambda: guards.protocol(make_inner), sock=sock,
                                                            backlog=1024)
    return Listener(runner, server, guards, asyncio.create_task(guards.sweep()))


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
