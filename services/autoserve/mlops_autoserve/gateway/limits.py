"""Limits no caller can raise: request bodies in flight (one budget across all routes), the
time a body may take, and a counter of every request or connection a limit refused or cut.

Past the body budget a request gets 503 with ``Retry-After`` before its body is read (a
declared length) or as soon as its chunks pass it (chunked). A body that does not arrive
within ``client_body_timeout`` is cut: 408, the connection closed, and it never held a
route's in-flight slot (those are taken only once the body is in).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from mlops_autoserve.metrics import GatewayMetrics

# The reasons of autoserve_gateway_limits_total, each series made at start (a dashboard sees 0, not nothing).
REASONS = ("connections", "header_timeout", "send_timeout", "body_timeout", "body_budget", "body_size", "response_size",
           "shadow_bytes", "payload_log_bytes")


class LimitCounter:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._children = {reason: metrics.limits_total.labels(reason) for reason in REASONS}

    def hit(self, reason: str) -> None:
        self._children[reason].inc()


class BodyBudget:
    """Bytes of request bodies held in memory at once, across every route."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


class BodyTooLarge(Exception):
    pass


class OverBudget(Exception):
    pass


class BodyTimeout(Exception):
    pass


class BodyReader:
    """Reads one request's body under the size cap, the shared budget and the time limit.

    ``reserved`` is what this request holds of the budget; the caller releases it
    (:meth:`release`) once the request is answered.
    """

    __slots__ = ("budget", "max_bytes", "timeout", "reserved", "seen")

    def __init__(self, budget: BodyBudget, max_bytes: int, timeout: float) -> None:
        self.budget, self.max_bytes, self.timeout = budget, max_bytes, timeout
        self.reserved = 0
        self.seen = 0  # bytes of body read, kept or not

    async def read(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None:
            if not self.budget.reserve(length):
                raise OverBudget
            self.reserved = length
        try:
            async with asyncio.timeout(self.timeout):
                return await self._chunks(request, length is None)
        except TimeoutError:
            raise BodyTimeout from None

    async def _chunks(self, request: web.Request, chunked: bool) -> bytes:
        chunks, size = [], 0
        while chunk := await request.content.readany():
            size += len(chunk)
            self.seen = size
            if size > self.max_bytes:
                raise BodyTooLarge
            if chunked:
                if not self.budget.reserve(len(chunk)):
                    raise OverBudget
                self.reserved += len(chunk)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def release(self) -> None:
        self.budget.release(self.reserved)
        self.reserved = 0
