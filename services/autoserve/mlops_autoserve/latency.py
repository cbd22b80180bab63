"""Latency histograms that add up across gateway instances.

A percentile cannot be averaged: the p95 of two gateways is not the mean of their p95s.
Each instance therefore reports how many answers fell in each of a fixed set of buckets
(geometric, 5 % wide, 0.1 ms to ~10 min); the watcher sums the counts bucket by bucket
and reads the p95 off the sum. The error is one bucket: at most 5 % of the value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

FIRST_MS = 0.1
FACTOR = 1.05
BUCKETS = 320  # FIRST_MS * FACTOR**320 ~ 6e5 ms: the last bucket takes everything slower


def bucket_of(ms: float) -> int:
    """The index of the bucket holding ``ms`` (bucket i: up to FIRST_MS * FACTOR**i)."""
    if not ms > FIRST_MS:  # NaN and everything up to 0.1 ms land in the first
        return 0
    return min(BUCKETS, math.ceil(math.log(ms / FIRST_MS, FACTOR) - 1e-9))


def upper_ms(index: int) -> float:
    return FIRST_MS * FACTOR ** index


def histogram(latencies_ms: Iterable[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for ms in latencies_ms:
        i = bucket_of(ms)
        counts[i] = counts.get(i, 0) + 1
    return counts


def merge(histograms: Iterable[Mapping]) -> dict[int, int]:
    """Sum sparse histograms (JSON turns their keys into strings: both are taken)."""
    total: dict[int, int] = {}
    for h in histograms:
        for index, count in h.items():
            i = int(index)
            total[i] = total.get(i, 0) + int(count)
    return total


def quantile_ms(counts: Mapping[int, int], q: float = 0.95) -> float | None:
    """The upper bound of the bucket holding the q-th answer (None: no answers)."""
    n = sum(counts.values())
    if n == 0:
        return None
    rank, seen = max(1, math.ceil(q * n)), 0
    for i in sorted(counts):
        seen += counts[i]
        if seen >= rank:
            return upper_ms(i)
    return upper_ms(max(counts))
