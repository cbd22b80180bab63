"""Copies of answered requests, sent to the shadow alias off the request path.

The queue is bounded twice, in copies and in bytes (request plus answer held for the
comparison): when either is full a copy is dropped and counted, never waited for. Each copy
goes to the shadow's least-loaded replica; its answer (capped like a caller's) is compared
with the one the caller got (:func:`compare.compare`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from mlops_autoserve.gateway.backend import BackendError, ResponseTooLarge
from mlops_autoserve.gateway.compare import compare
from mlops_autoserve.gateway.limits import LimitCounter
from mlops_autoserve.gateway.pool import ReplicaPool
from mlops_autoserve.gateway.proxy import Proxy
from mlops_autoserve.gateway.recent import RecentAnswers
from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.routetable import RouteEntry, ShadowTarget

log = logging.getLogger("autoserve.gateway")

RESULTS = ("ok", "error", "timeout", "dropped", "mismatch")  # of autoserve_shadow_requests_total


@dataclass(frozen=True)
class Copy:
    model: str
    alias: str  # the route it was copied from (whose answer it is compared with)
    shadow: ShadowTarget
    body: bytes | None
    headers: dict
    answer: bytes

    @property
    def size(self) -> int:
        return len(self.body or b"") + len(self.answer)


class ShadowCopies:
    def __init__(self, pool: ReplicaPool, proxy: Proxy, recent: RecentAnswers, metrics: GatewayMetrics,
                 limits: LimitCounter, coin: random.Random, *, max_copies: int, max_bytes: int, workers: int) -> None:
        self.pool, self.proxy, self.recent, self.metrics, self.limits, self.coin = (
            pool, proxy, recent, metrics, limits, coin)
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(maxsize=max_copies)
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.workers = workers
        self._series: set[tuple[str, str, str]] = set()  # (model, shadow alias, version) with series

    def start(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self._work()) for _ in range(self.workers)]

    def offer(self, route: RouteEntry, body: bytes | None, headers: dict, answer: bytes) -> None:
        shadow = route.shadow
        if shadow is None or self.coin.random() * 100 >= shadow.percent:
            return
        copy = Copy(route.model, route.alias, shadow, body, headers, answer)
        if self.queued_bytes + copy.size > self.max_bytes:
            self.limits.hit("shadow_bytes")
            self._count(copy, "dropped")
            return
        try:
            self.queue.put_nowait(copy)
        except asyncio.QueueFull:
            self._count(copy, "dropped")
            return
        self.queued_bytes += copy.size

    async def _work(self) -> None:
        while True:
            copy = await self.queue.get()
            try:
                await self._send(copy)
            except Exception:  # noqa: BLE001 - a shadow copy must never take a worker down
                log.exception("shadow copy failed", extra={"model": copy.model, "alias": copy.shadow.alias})
                self._count(copy, "error")
            finally:
                self.queued_bytes -= copy.size
                self.queue.task_done()

    async def _send(self, copy: Copy) -> None:
        shadow = copy.shadow
        replica = self.pool.pick(shadow.replicas, set())  # the same choice as for callers
        if replica is None:
            self._count(copy, "error")
            return
        state = self.pool.state(replica.url)
        state.enter()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.proxy.request_timeout):
                answer = await self.proxy.client.request(replica.url, "POST", "/invocations", copy.body,
                                                         copy.headers)
            payload, status = answer.body, answer.status
        except TimeoutError:
            self._count(copy, "timeout")
            return
        except (BackendError, ResponseTooLarge):
            self._count(copy, "error")
            return
        finally:
            state.inflight -= 1
        self._series.add((copy.model, shadow.alias, str(shadow.version)))
        self.metrics.shadow_latency.labels(copy.model, shadow.alias).observe(time.perf_counter() - started)
        if status != 200:
            self._count(copy, "error")
            return
        result = compare(copy.answer, payload, shadow.compare)
        if result.kind == "mismatch":
            self._count(copy, "mismatch")
            return
        self._count(copy, "ok")
        self.recent.compared(copy.model, copy.alias, str(shadow.version), result)
        labels = (copy.model, shadow.alias, str(shadow.version))
        self.metrics.shadow_compared.labels(*labels).inc(result.rows)
        if result.kind == "classification":
            self.metrics.shadow_agreement.labels(*labels).inc(result.agree)
        else:
            self.metrics.shadow_abs_diff.labels(*labels).inc(result.abs_diff_sum)

    def _count(self, copy: Copy, result: str) -> None:
        self._series.add((copy.model, copy.shadow.alias, str(copy.shadow.version)))
        self.metrics.shadow_requests.labels(copy.model, copy.shadow.alias, str(copy.shadow.version), result).inc()

    def keep_only(self, shadows: set[tuple[str, str, str]]) -> None:
        """Remove the series of (model, shadow alias, version) no route of the table copies to
        any more: like the answer counters, the shadow series follow the table."""
        m = self.metrics
        for model, alias, version in [k for k in self._series if k not in shadows]:
            self._series.discard((model, alias, version))
            for metric, labels in ((m.shadow_compared, (model, alias, version)),
                                   (m.shadow_agreement, (model, alias, version)),
                                   (m.shadow_abs_diff, (model, alias, version))):
                _remove(metric, labels)
            for result in RESULTS:
                _remove(m.shadow_requests, (model, alias, version, result))
            if not any(k[:2] == (model, alias) for k in self._series):
                _remove(m.shadow_latency, (model, alias))


def _remove(metric, labels: tuple[str, ...]) -> None:  # noqa: ANN001 - a prometheus_client metric
    try:
        metric.remove(*labels)
    except KeyError:  # never made
        pass
