"""``autoserve_requests_total`` and ``autoserve_request_duration_seconds``, with label sets
bounded by the route table.

Labels come from the table, never from the URL: an answer to a route the table does not
have is counted under ``model="_unknown"``. When a route leaves the table its series go
with it, and a route keeps the series of its last :data:`VERSIONS_KEPT` versions only, so
the number of series follows the table, whatever callers send.
"""

from __future__ import annotations

from mlops_autoserve.metrics import GatewayMetrics

UNKNOWN = "_unknown"
VERSIONS_KEPT = 4


class AnswerCounters:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self._counters: dict[tuple[str, str, str, str], object] = {}  # model, alias, version, code
        self._timers: dict[tuple[str, str], object] = {}
        self._versions: dict[tuple[str, str], list[str]] = {}  # newest last

    def observe(self, model: str, alias: str, version: str, status: int, seconds: float) -> None:
        labels = (model, alias, version, str(status))
        counter = self._counters.get(labels)
        if counter is None:
            counter = self._counters[labels] = self.metrics.requests_total.labels(*labels)
            self._saw_version(model, alias, version)
        counter.inc()
        timer = self._timers.get(labels[:2])
        if timer is None:
            timer = self._timers[labels[:2]] = self.metrics.request_duration.labels(*labels[:2])
        timer.observe(seconds)

    def unknown(self, status: int, seconds: float) -> None:
        self.observe(UNKNOWN, UNKNOWN, "", status, seconds)

    def _saw_version(self, model: str, alias: str, version: str) -> None:
        versions = self._versions.setdefault((model, alias), [])
        if version in versions:
            return
        versions.append(version)
        while len(versions) > VERSIONS_KEPT:
            self._drop(lambda k, old=versions.pop(0): k[:3] == (model, alias, old))

    def keep_only(self, routes: set[tuple[str, str]]) -> None:
        """Remove the series of (model, alias) pairs that left the route table."""
        keep = routes | {(UNKNOWN, UNKNOWN)}
        self._drop(lambda k: k[:2] not in keep)
        for key in [k for k in self._timers if k not in keep]:
            self.metrics.request_duration.remove(*key)
            del self._timers[key]
        for key in [k for k in self._versions if k not in keep]:
            del self._versions[key]

    def _drop(self, gone) -> None:  # noqa: ANN001 - a predicate on the counter's labels
        for labels in [k for k in self._counters if gone(k)]:
            self.metrics.requests_total.remove(*labels)
            del self._counters[labels]
