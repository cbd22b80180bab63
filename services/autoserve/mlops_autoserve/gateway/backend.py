"""The gateway's HTTP/1.1 client to its backends: keep-alive connections per backend, one
request at a time on each, answers read whole under a size cap.

Why not aiohttp's ``ClientSession``: profiled with py-spy under wrk, its request and
response objects, connector and stream reader took about half of the gateway's CPU per
proxied request. The backends are few and known (``mlflow models serve`` is uvicorn:
HTTP/1.1, ``Content-Length`` or chunked answers), so a client for exactly that is a parser
(httptools, the one uvicorn uses) and a list of idle connections.

* a connection idle ``keepalive`` seconds is closed rather than reused: uvicorn closes
  idle connections after 5 s, and a request on a connection it is closing would fail;
* at most ``max_idle`` idle connections are kept per backend; idle ones of a backend that
  closed them go away with them, and :meth:`BackendClient.close_expired` closes the rest
  once past ``keepalive`` (nothing is kept for a backend that is gone or hangs);
* ``fresh=True`` sends over a new connection, closed after the answer: a retry must not
  land on another pooled connection to a backend that restarted on the same port;
* a refused connect, a reset, or a connection closed before the whole answer is
  :class:`Unreachable` (nothing reached the caller: the proxy may retry); an answer past
  ``max_response_bytes`` (declared or read so far) is :class:`ResponseTooLarge` and its
  connection is dropped, read no further; an answer that is no HTTP is :class:`BackendError`.

Timeouts are the caller's (``asyncio.timeout`` around :meth:`BackendClient.request`): a
request cancelled half-way closes its connection.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

CONNECT_TIMEOUT_S = 2.0
KEEPALIVE_S = 4.0  # under uvicorn's 5 s
MAX_IDLE_PER_BACKEND = 64


class BackendError(Exception):
    """The backend answered something that is no HTTP answer."""


class Unreachable(BackendError):
    """No answer came: connect refused or timed out, or the connection closed before the end."""


class ResponseTooLarge(Exception):
    pass


@dataclass(slots=True)
class Answer:
    status: int
    content_type: str | None
    body: bytes


@lru_cache(maxsize=4096)  # backend URLs come from the route table, never from a caller
def _address(url: str) -> tuple[str, int, bytes, bytes]:
    """(host, port, Host header, path prefix) of a backend URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BackendError(f"not an http:// backend URL: {url!r}")
    return parts.hostname, parts.port or 80, parts.netloc.encode("idna"), parts.path.rstrip("/").encode()


def _header_lines(headers: dict[str, str]) -> bytes:
    """Forwarded headers; one with a CR, LF or NUL in it is dropped (no header injection)."""
    lines = []
    for name, value in headers.items():
        if any(c in value for c in "\r\n\0"):
            continue
        lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    return b"".join(lines)


class _Connection(asyncio.Protocol):
    """One keep-alive connection to one backend, parsing the answers with httptools."""

    __slots__ = ("key", "client", "parser", "transport", "waiter", "status", "content_type", "chunks", "size",
                 "max_bytes", "headers_done", "framed", "keep_alive", "idle_since")

    def __init__(self, key: tuple[str, int], client: BackendClient) -> None:
        self.key, self.client = key, client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.max_bytes = client.max_response_bytes
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status, self.content_type, self.chunks, self.size = 0, None, [], 0
        self.headers_done = self.framed = self.keep_alive = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # bytes nobody asked for: this connection is not reusable
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # a callback's own exception is its context
            if isinstance(exc.__context__, ResponseTooLarge):
                self._fail(exc.__context__)
            else:
                self._fail(BackendError(f"malformed answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost(self)
        if self.waiter is not None and not self.waiter.done():
            if self.headers_done and not self.framed:  # an answer delimited by the close itself
                self._finish()
            else:
                self.waiter.set_exception(Unreachable("the backend closed the connection before the whole answer"))
        self.transport = None

    # -- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1")
        elif lower == b"content-length":
            self.framed = True
            if int(value) > self.max_bytes:
                raise ResponseTooLarge
        elif lower == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_bytes:
            raise ResponseTooLarge
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        # Read here: once the message is over, httptools answers False whatever the headers said.
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    # -- requests --------------------------------------------------------------------------
    def _finish(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Answer(self.status, self.content_type, body))

    def _fail(self, exc: Exception) -> None:
        self.chunks = []  # what was read of it goes now, not when this connection object does
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()  # the rest of that answer is never read

    async def exchange(self, request: bytes) -> Answer:
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def reusable(self) -> bool:
        return self.keep_alive and self.transport is not None and not self.transport.is_closing()


class BackendClient:
    def __init__(self, max_response_bytes: int, keepalive: float = KEEPALIVE_S,
                 max_idle: int = MAX_IDLE_PER_BACKEND) -> None:
        self.max_response_bytes = max_response_bytes
        self.keepalive = keepalive
        self.max_idle = max_idle
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def request(self, url: str, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, fresh: bool = False) -> Answer:
        host, port, netloc, prefix = _address(url)
        head = b"%s %s%s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), prefix, path.encode(), netloc)
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        if fresh:
            head += b"Connection: close\r\n"
        head += _header_lines(headers or {}) + b"\r\n"
        key = (host, port)
        conn = None if fresh else self._checkout(key)
        if conn is None:
            conn = await self._connect(key)
        ok = False
        try:
            answer = await conn.exchange(head + body if body else head)
            ok = True
            return answer
        finally:
            if ok and not fresh and conn.reusable():
                self._checkin(conn)
            elif conn.transport is not None and ok:
                conn.transport.close()
            elif conn.transport is not None:  # cancelled or failed half-way: what is left is never read
                conn.transport.abort()

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(lambda: _Connection(key, self), *key)
        except TimeoutError:
            raise Unreachable(f"no connection to {key[0]}:{key[1]} within {CONNECT_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {key[0]}:{key[1]}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    def _checkout(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timing out
            if conn.transport is None:
                continue
            if now - conn.idle_since < self.keepalive:
                return conn
            conn.transport.close()
        return None

    def _checkin(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        if idle is not None and not idle:
            del self._idle[conn.key]

    def close_expired(self) -> None:
        """Close idle connections past ``keepalive`` (called every second: a backend that
        left the table, or hangs, and never closes them itself holds no socket for long)."""
        too_old = time.monotonic() - self.keepalive
        for idle in list(self._idle.values()):
            for conn in [c for c in idle if c.idle_since < too_old and c.transport is not None]:
                conn.transport.close()

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        await asyncio.sleep(0)
