"""The last answers per (model, alias, version) and the last shadow comparisons: what a
rollout's gate is judged on (``GET /stats`` on the admin port).

Kept only for routes in the table (the gateway calls :meth:`RecentAnswers.keep_only` when
the table changes), at most ``keep`` entries each: memory is bounded by the table.
"""

from __future__ import annotations

import collections
import time

from mlops_autoserve import latency
from mlops_autoserve.gateway.compare import Comparison

Key = tuple[str, str, str]  # model, alias, version


class RecentAnswers:
    def __init__(self, keep: int = 20_000) -> None:
        self.keep = keep
        self._answers: dict[Key, collections.deque] = {}
        self._comparisons: dict[Key, collections.deque] = {}

    def compared(self, model: str, alias: str, version: str, result: Comparison) -> None:
        """``version`` (a shadow) answered a copy of ``alias``'s request: keep how the two compared."""
        self._deque(self._comparisons, (model, alias, version)).append((time.time(), result))

    def record(self, model: str, alias: str, version: str, status: int, seconds: float) -> None:
        self._deque(self._answers, (model, alias, version)).append((time.time(), status, seconds))

    def _deque(self, store: dict[Key, collections.deque], key: Key) -> collections.deque:
        found = store.get(key)
        if found is None:
            found = store[key] = collections.deque(maxlen=self.keep)
        return found

    def keep_only(self, routes: set[tuple[str, str]]) -> None:
        """Forget (model, alias) pairs that left the route table."""
        for store in (self._answers, self._comparisons):
            for key in [k for k in store if k[:2] not in routes]:
                del store[key]

    def since(self, model: str, alias: str, version: str, start: float) -> dict:
        """Counts, the p95 and a mergeable latency histogram of the answers since ``start``."""
        recent = [(status, seconds) for t, status, seconds in self._answers.get((model, alias, version), ()) if t >= start]
        latencies = sorted(seconds for _, seconds in recent)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000 if latencies else None
        compared = [c for t, c in self._comparisons.get((model, alias, version), ()) if t >= start]
        labels = [c for c in compared if c.kind == "classification"]
        numbers = [c for c in compared if c.kind == "regression"]
        return {"requests": len(recent), "errors": sum(1 for status, _ in recent if status >= 500), "p95_ms": p95,
                "latency_buckets": latency.histogram(s * 1000 for s in latencies),
                "labels_compared": sum(c.rows for c in labels), "labels_agreed": sum(c.agree for c in labels),
                "numbers_compared": sum(c.rows for c in numbers), "abs_diff_sum": sum(c.abs_diff_sum for c in numbers),
                "nonfinite": sum(c.nonfinite for c in numbers)}
