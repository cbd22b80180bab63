"""Sending one request to a backend: pick a replica, send, retry once, cap the answer.

* a refused or reset connection, or an answer cut off before its end: retried once on
  another replica, or on the same one over a fresh connection when it is the only one.
  The caller has seen nothing yet (answers are buffered) and a prediction has no side
  effects, so a retry is safe;
* a backend that hangs: 504 after the request timeout, and the replica leaves the rotation;
* an answer over ``max_response_bytes`` (declared or read so far): 502, read no further;
* pooled backend connections kept alive 4 s, under uvicorn's 5 s, so none goes stale
  (:mod:`backend`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

from mlops_autoserve.gateway.backend import (
    BackendClient,
    BackendError,
    ResponseTooLarge,
    Unreachable,
)
from mlops_autoserve.gateway.limits import LimitCounter
from mlops_autoserve.gateway.pool import ReplicaPool
from mlops_autoserve.gateway.responses import bad_gateway, error
from mlops_autoserve.routetable import RouteEntry

log = logging.getLogger("autoserve.gateway")


class Proxy:
    def __init__(self, pool: ReplicaPool, request_timeout: float, max_response_bytes: int,
                 limits: LimitCounter, discarded: Callable[[int], None] = lambda size: None) -> None:
        """``discarded(size)``: an answer of at least ``size`` bytes was read and dropped."""
        self.discarded = discarded
        self.pool = pool
        self.request_timeout = request_timeout
        self.max_response_bytes = max_response_bytes
        self.limits = limits
        self.client = BackendClient(max_response_bytes)

    async def close(self) -> None:
        await self.client.close()

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
                async with asyncio.timeout(self.request_timeout):
                    answer = await self.client.request(replica.url, method, path, body, headers, fresh=attempt > 0)
            except TimeoutError:
                # A replica that let a request hang for the whole timeout leaves the rotation at
                # once: the next request must not wait as long for the same answer.
                self.pool.failed(replica, "timeout", eject=True)
                return error(504, f"{route.model}@{route.alias} did not answer within {self.request_timeout:g} s",
                             headers={"X-Model-Version": version}, model=route.model, alias=route.alias,
                             version=version)
            except ResponseTooLarge:
                self.limits.hit("response_size")
                self.discarded(self.max_response_bytes)
                return bad_gateway(route, version, f"answer over {self.max_response_bytes // 2**20} MB")
            except Unreachable as exc:  # nothing reached the caller: safe to try again
                self.pool.failed(replica, exc)
                last_problem = str(exc)
                continue
            except BackendError as exc:
                self.pool.failed(replica, exc)
                return bad_gateway(route, version, str(exc))
            finally:
                state.inflight -= 1
            state.failures = 0
            out = {"X-Model-Version": version}
            if answer.content_type is not None:
                out["Content-Type"] = answer.content_type
            return web.Response(status=answer.status, body=answer.body, headers=out)
        log.warning("backend unreachable", extra={"model": route.model, "alias": route.alias,
                                                  "version": route.version, "error": last_problem})
        return bad_gateway(route, str(route.version), "deployment unreachable")
