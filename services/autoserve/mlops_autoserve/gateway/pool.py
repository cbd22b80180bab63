"""The replica pool: what the gateway knows of each backend, which one gets the next request,
which ones are out of rotation and when they come back.

State is kept per backend URL and only for URLs in the route table: a URL that leaves the
table is forgotten once nothing is in flight on it, so a replica restarted later on the same
port (the process runtime reuses ports) starts clean instead of inheriting an ejection or a
failure count from the process that died there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from mlops_autoserve.gateway.backend import (
    BackendClient,
    BackendError,
    ResponseTooLarge,
)
from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.routetable import Replica

log = logging.getLogger("autoserve.gateway")

PING_TIMEOUT_S = 1.0


class ReplicaState:
    """One backend: in flight, requests sent, failures in a row, ejected since."""

    __slots__ = ("inflight", "requests", "failures", "ejected_at")

    def __init__(self) -> None:
        self.inflight = 0
        self.requests = 0  # ever sent (callers' and shadow copies): the watcher's autoscaler takes rates from it
        self.failures = 0
        self.ejected_at: float | None = None

    def enter(self) -> None:
        self.inflight += 1
        self.requests += 1


class ReplicaPool:
    def __init__(self, metrics: GatewayMetrics, eject_after: int) -> None:
        self.metrics = metrics
        self.eject_after = eject_after
        self.states: dict[str, ReplicaState] = {}  # by backend URL

    def state(self, url: str) -> ReplicaState:
        state = self.states.get(url)
        if state is None:
            state = self.states[url] = ReplicaState()
        return state

    def pick(self, replicas: Iterable[Replica], exclude: set[str]) -> Replica | None:
        """Least outstanding requests among replicas in rotation, the lowest index on ties.

        Ties go to the same replica rather than round robin: at low load one warm process
        answers faster than two taking turns (measured with bench_gateway), and as soon as
        it has a request in flight the next one goes to another replica.
        """
        best, best_load, fallback = None, 0, None
        for replica in replicas:
            if replica.url in exclude:
                continue
            state = self.state(replica.url)
            if state.ejected_at is not None:
                fallback = fallback or replica
                continue
            if best is None or state.inflight < best_load:
                best, best_load = replica, state.inflight
                if best_load == 0:
                    break
        return best or fallback  # every replica ejected: try one anyway rather than fail outright

    def succeeded(self, url: str) -> None:
        self.state(url).failures = 0

    def failed(self, replica: Replica, problem: object, eject: bool = False) -> None:
        """Count a failure; ``eject_after`` in a row (or ``eject``) take the replica out of rotation."""
        state = self.state(replica.url)
        state.failures += 1
        if state.ejected_at is None and (eject or state.failures >= self.eject_after):
            state.ejected_at = time.time()
            self.metrics.ejections_total.inc()
            log.warning("replica ejected", extra={"url": replica.url, "failures": state.failures, "error": str(problem)})

    def forget_all_but(self, live: set[str]) -> None:
        """Drop the state of backends no longer in the table (those with nothing in flight)."""
        for url in [u for u, s in self.states.items() if u not in live and s.inflight == 0]:
            del self.states[url]

    async def readmit(self, client: BackendClient, interval: float) -> None:
        """Ping ejected replicas; one good ``GET /ping`` puts a replica back in rotation."""
        while True:
            await asyncio.sleep(interval)
            for url, state in list(self.states.items()):
                if state.ejected_at is None:
                    continue
                try:
                    async with asyncio.timeout(PING_TIMEOUT_S):
                        ok = (await client.request(url, "GET", "/ping", fresh=True)).status == 200
                except (BackendError, ResponseTooLarge, TimeoutError):
                    ok = False
                if ok:
                    state.ejected_at, state.failures = None, 0
                    log.info("replica re-admitted", extra={"url": url})

    def inflight(self) -> dict[str, int]:
        return {url: s.inflight for url, s in self.states.items()}

    def load(self) -> dict[str, dict[str, int]]:
        return {url: {"inflight": s.inflight, "requests": s.requests} for url, s in self.states.items()}
