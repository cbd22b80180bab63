"""Adaptive batching: concurrent requests to one route and version, of one shape, scored as
one request and split back exactly (:mod:`batching`).

Adaptive: a request that finds nothing of its kind in flight at the backend goes at once
(a lone caller never waits); one that arrives while a batch of its kind is in flight waits
for it to come back, at most ``max_wait_ms``, or until ``max_rows`` rows wait, and then goes
with the others. The split is checked: an answer that is not one prediction per row sent
makes the batch go again request by request and marks the version "not batchable" (no
batching for it again while it serves the route); an error answer makes it go again one by
one too, so one bad request's 400 reaches its caller only.

What stays per request is decided outside: the canary split (before), the caller's status
and X-Model-Version, shadows, the payload log and the rollout figures (after, with each
caller's own answer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from mlops_autoserve.batching import Part, merge, parse, split
from mlops_autoserve.routetable import BatchSpec, RouteEntry

log = logging.getLogger("autoserve.gateway")

Send = Callable[[RouteEntry, bytes, dict], Awaitable[web.Response]]
MAX_WAITING_PER_KEY = 4096  # requests held for one batch key at most (beyond: they go alone)


@dataclass
class _Waiting:
    part: Part
    body: bytes
    headers: dict
    answer: asyncio.Future
    since: float


@dataclass
class _Lane:
    """One route, version and request shape: what waits, and whether a batch is out."""

    waiting: list[_Waiting] = field(default_factory=list)
    rows: int = 0
    in_flight: int = 0
    timer: asyncio.TimerHandle | None = None


class Batcher:
    def __init__(self, send: Send, on_batch: Callable[[int, int, float], None] = lambda rows, n, held: None,
                 on_resent: Callable[[str], None] = lambda reason: None) -> None:
        """``send(route, body, headers)``: one request to the route's backend. ``on_batch(rows,
        requests, seconds held)`` and ``on_resent(reason)``: for the metrics."""
        self._send = send
        self.on_batch, self.on_resent = on_batch, on_resent
        self._lanes: dict[tuple, _Lane] = {}
        self.not_batchable: set[tuple[str, str, int]] = set()  # (model, alias, version)

    def forget_all_but(self, versions: set[tuple[str, str, int]]) -> None:
        self.not_batchable &= versions

    async def send(self, route: RouteEntry, spec: BatchSpec, body: bytes, headers: dict) -> web.Response:
        part = parse(body, headers.get("Content-Type"))
        version = (route.model, route.alias, int(route.version or 0))
        if part is None or version in self.not_batchable or part.rows >= spec.max_rows:
            return await self._send(route, body, headers)
        key = (version, part.key)
        lane = self._lanes.setdefault(key, _Lane())
        if lane.in_flight == 0 and not lane.waiting:  # nothing of its kind out: no reason to wait
            return await self._alone_in(lane, key, route, spec, body, headers)
        if len(lane.waiting) >= MAX_WAITING_PER_KEY:
            return await self._send(route, body, headers)
        waiting = _Waiting(part, body, headers, asyncio.get_running_loop().create_future(), time.monotonic())
        lane.waiting.append(waiting)
        lane.rows += part.rows
        if lane.rows >= spec.max_rows:
            self._flush(key, route, spec)
        elif lane.timer is None:
            lane.timer = asyncio.get_running_loop().call_later(spec.max_wait_ms / 1000, self._flush, key, route, spec)
        return await waiting.answer

    async def _alone_in(self, lane: _Lane, key: tuple, route: RouteEntry, spec: BatchSpec, body: bytes,
                        headers: dict) -> web.Response:
        lane.in_flight += 1
        try:
            return await self._send(route, body, headers)
        finally:
            lane.in_flight -= 1
            self._after(key, route, spec)

    def _after(self, key: tuple, route: RouteEntry, spec: BatchSpec) -> None:
        """A request or batch of this lane came back: what waited for it goes now."""
        lane = self._lanes.get(key)
        if lane is None:
            return
        if lane.waiting:
            self._flush(key, route, spec)
        elif lane.in_flight == 0:
            del self._lanes[key]

    def _flush(self, key: tuple, route: RouteEntry, spec: BatchSpec) -> None:
        lane = self._lanes.get(key)
        if lane is None or not lane.waiting:
            return
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        batch, lane.waiting, lane.rows = lane.waiting, [], 0
        lane.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(batch, route))

        def done(_: asyncio.Task) -> None:
            lane.in_flight -= 1
            self._after(key, route, spec)

        task.add_done_callback(done)

    async def _run(self, batch: list[_Waiting], route: RouteEntry) -> None:
        try:
            if len(batch) == 1:
                only = batch[0]
                self._answer(only, await self._send(route, only.body, only.headers))
                return
            now = time.monotonic()
            self.on_batch(sum(w.part.rows for w in batch), len(batch), max(now - w.since for w in batch))
            body, content_type = merge([w.part for w in batch])
            response = await self._send(route, body, {"Content-Type": content_type})
            pieces = split(response.body, [w.part.rows for w in batch]) if response.status == 200 else None
            if pieces is not None:
                for waiting, piece in zip(batch, pieces, strict=True):
                    self._answer(waiting, web.Response(status=200, body=piece, headers={
                        "X-Model-Version": response.headers.get("X-Model-Version", ""),
                        "Content-Type": "application/json"}))
                return
            reason = "error" if response.status != 200 else "not_row_aligned"
            if reason == "not_row_aligned":
                version = (route.model, route.alias, int(route.version or 0))
                self.not_batchable.add(version)
                log.warning("not batchable: the answer to a batch is not one prediction per row; every request "
                            "of this version goes alone from now on",
                            extra={"model": route.model, "alias": route.alias, "version": route.version})
            self.on_resent(reason)
            answers = await asyncio.gather(*(self._send(route, w.body, w.headers) for w in batch),
                                           return_exceptions=True)
            for waiting, answer in zip(batch, answers, strict=True):
                self._answer(waiting, answer)
        except BaseException as exc:  # every caller gets an answer, whatever happened
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            if not isinstance(exc, Exception):
                raise

    @staticmethod
    def _answer(waiting: _Waiting, answer: web.Response | BaseException) -> None:
        if waiting.answer.done():
            return
        if isinstance(answer, BaseException):
            waiting.answer.set_exception(answer)
        else:
            waiting.answer.set_result(answer)
