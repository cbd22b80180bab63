"""Sending one request to a backend: pick a replica, send, retry once, cap the answer.

* a refused or reset connection, or an answer cut off before its end: retried once on
  another replica, or on the same one over a fresh connection when it is the only one.
  The caller has seen nothing yet (answers are buffered) and a prediction has no side
  effects, so a retry is safe;
* a backend that hangs: 504 after the request timeout, and the replica leaves the rotation;
* an answer over ``max_response_bytes`` (declared or read so far): 502, read no further;
* pooled backend connections kept alive 4 s, under uvicorn's 5 s, so none goes stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from mlops_autoserve.gateway.limits import LimitCounter
from mlops_autoserve.gateway.pool import ReplicaPool
from mlops_autoserve.gateway.responses import bad_gateway, error
from mlops_autoserve.routetable import RouteEntry

log = logging.getLogger("autoserve.gateway")

BACKEND_KEEPALIVE_S = 4.0  # mlflow models serve (uvicorn) closes idle connections after 5 s
RETRYABLE = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
             aiohttp.ClientPayloadError)


class ResponseTooLarge(Exception):
    pass


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole answer, or ResponseTooLarge as soon as it is known to pass ``limit``."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise ResponseTooLarge
        return await resp.read()
    chunks, size = [], 0
    while chunk := await resp.content.readany():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class Proxy:
    def __init__(self, pool: ReplicaPool, request_timeout: float, max_response_bytes: int,
                 limits: LimitCounter) -> None:
        self.pool = pool
        self.request_timeout = request_timeout
        self.max_response_bytes = max_response_bytes
        self.limits = limits
        self.session: aiohttp.ClientSession | None = None
        self.fresh_session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=BACKEND_KEEPALIVE_S)
        # No Accept-Encoding of aiohttp's own: answers are passed on as bytes, without their
        # Content-Encoding, so a backend asked for gzip would hand callers unreadable bytes.
        options = {"auto_decompress": False, "skip_auto_headers": ("User-Agent", "Accept-Encoding"),
                   "timeout": aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=2)}
        self.session = aiohttp.ClientSession(connector=connector, **options)
        # Retries go over a new TCP connection: the pool may hold several connections to a
        # backend that restarted on the same port, all of them dead.
        self.fresh_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True), **options)

    async def close(self) -> None:
        for session in (self.session, self.fresh_session):
            if session is not None:
                await session.close()

    async def send(self, route: RouteEntry, method: str, path: str, body: bytes | None, headers: dict,
                   latest: Callable[[RouteEntry], RouteEntry]) -> web.Response:
        """The backend's answer; ``latest`` gives the route as the table has it now (a retry
        follows a switch that happened meanwhile)."""
        tried: set[str] = set()
        last_problem = "no replica"
        for attempt in range(2):  # the first try and one retry
            current = route if attempt == 0 else latest(route)
            # Another replica if there is one; else the same one again on a fresh connection (a
            # pooled connection to a backend that restarted on the same port fails this way).
            replica = self.pool.pick(current.replicas, tried) or self.pool.pick(current.replicas, set())
            if replica is None:
                break
            tried.add(replica.url)
            state = self.pool.state(replica.url)
            state.enter()
            version = str(current.version if replica in current.replicas else route.version)
            try:
                session = self.session if attempt == 0 else self.fresh_session
                async with session.request(method, replica.url + path, data=body, headers=headers) as resp:
                    try:
                        payload = await read_capped(resp, self.max_response_bytes)
                    except ResponseTooLarge:
                        resp.close()  # drop the connection rather than read the rest
                        self.limits.hit("response_size")
                        return bad_gateway(route, version, f"answer over {self.max_response_bytes // 2**20} MB")
                    state.failures = 0
                    out = {"X-Model-Version": version}
                    if "Content-Type" in resp.headers:
                        out["Content-Type"] = resp.headers["Content-Type"]
                    return web.Response(status=resp.status, body=payload, headers=out)
            except asyncio.TimeoutError:
                # A replica that let a request hang for the whole timeout leaves the rotation at
                # once: the next request must not wait as long for the same answer.
                self.pool.failed(replica, "timeout", eject=True)
                return error(504, f"{route.model}@{route.alias} did not answer within {self.request_timeout:g} s",
                             headers={"X-Model-Version": version}, model=route.model, alias=route.alias,
                             version=version)
            except RETRYABLE as exc:  # nothing reached the caller: safe to try again
                self.pool.failed(replica, exc)
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            except aiohttp.ClientError as exc:
                self.pool.failed(replica, exc)
                return bad_gateway(route, version, f"{type(exc).__name__}: {exc}")
            finally:
                state.inflight -= 1
        log.warning("backend unreachable", extra={"model": route.model, "alias": route.alias,
                                                  "version": route.version, "error": last_problem})
        return bad_gateway(route, str(route.version), "deployment unreachable")
