"""Every gateway instance the watcher reads figures from, and their figures added up.

A gateway may run as several processes (``--gateway-instances``, ``mlops gateway
--instances``, or gateways started by hand on other hosts), each counting only the requests
it proxied. The watcher's decisions need the sums: the autoscaler the load per backend, the
drain the requests still in flight to a backend, a rollout's gate the answers of a step.
:class:`GatewayFleet` finds the instances (the ``--gateway-admin-url`` URLs, plus the records
live gateways keep in ``<state_dir>/gateways``), asks them all at once with short timeouts,
and adds up what answered. A rollout's p95 comes from the instances' latency histograms
merged (:mod:`latency`): a percentile of percentiles would be wrong.

Each method answers None when no instance answered: the callers keep what they do without
figures (hold the replica counts, drain by time, wait).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlops_autoserve import latency
from mlops_autoserve.gateway.server import GATEWAYS_DIR, STALE_S
from mlops_autoserve.settings import AutoserveSettings
from mlops_toolkit import http

log = logging.getLogger("autoserve.gateways")

MAX_PARALLEL = 16  # instances asked at once
SUMMED = ("requests", "errors", "labels_compared", "labels_agreed", "numbers_compared", "abs_diff_sum", "nonfinite")


def _same(url: str) -> str:
    """One spelling per admin URL, so an instance named twice is asked (and counted) once."""
    parts = urllib.parse.urlsplit(url.strip().rstrip("/"))
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if host == "localhost" else host
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))


def registered(state_dir: Path, now: float | None = None, stale_after: float = STALE_S) -> list[dict]:
    """The records of live gateways in ``<state_dir>/gateways``; stale ones (their process
    stopped touching them) are removed."""
    directory = Path(state_dir) / GATEWAYS_DIR
    now = time.time() if now is None else now
    try:
        paths = [p for p in directory.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
    except OSError:  # no gateway ever registered here
        return []
    records = []
    for path in sorted(paths):
        try:
            fresh = now - path.stat().st_mtime < stale_after
            record = json.loads(path.read_text()) if fresh else None
        except (OSError, ValueError):
            continue  # removed meanwhile, or being replaced
        if not fresh:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            log.info("removed the record of a gateway that stopped", extra={"path": str(path)})
        elif isinstance(record, dict) and isinstance(record.get("admin_url"), str):
            records.append(record)
    return records


class GatewayFleet:
    def __init__(self, settings: AutoserveSettings) -> None:
        self.configured = tuple(settings.gateway_admin_urls)
        self.state_dir = settings.state_dir
        token = settings.gateway_admin_token
        self.headers = {"Authorization": f"Bearer {token}"} if token else None

    def urls(self) -> list[str]:
        """Every instance's admin URL, once each: the configured ones, then the registered ones."""
        found = [*self.configured, *(r["admin_url"] for r in registered(self.state_dir))]
        return list(dict.fromkeys(_same(u) for u in found if u.strip()))

    def load_by_instance(self) -> dict[str, dict[str, dict[str, float]]] | None:
        """Per instance (admin URL) that answered: per backend URL, requests in flight and
        requests sent (a counter from the instance's start)."""
        answers = self._ask("/load", 1.0, lambda data: {
            u: {"inflight": float(f.get("inflight", 0)), "requests": int(f.get("requests", 0))}
            for u, f in data.items()}, keyed=True)
        return answers or None

    def load(self) -> dict[str, dict[str, float]] | None:
        """Per backend URL: requests in flight and requests sent, over every instance."""
        answers = self.load_by_instance()
        if answers is None:
            return None
        total: dict[str, dict[str, float]] = {}
        for figures in answers.values():
            for url, f in figures.items():
                summed = total.setdefault(url, {"inflight": 0.0, "requests": 0})
                summed["inflight"] += f["inflight"]
                summed["requests"] += f["requests"]
        return total

    def inflight(self) -> dict[str, int] | None:
        """Per backend URL: requests in flight, over every instance."""
        answers = self._ask("/inflight", 1.0, lambda data: {u: int(n) for u, n in data.items()})
        total: dict[str, int] = {}
        for answer in answers:
            for url, count in answer.items():
                total[url] = total.get(url, 0) + count
        return total if answers else None

    def stats(self, model: str, alias: str, version: str, since: float) -> dict | None:
        """The answers of (model, alias, version) since ``since``, every instance's added up,
        shaped as one gateway's ``/stats``; the p95 read off the merged histograms."""
        query = urllib.parse.urlencode({"model": model, "alias": alias, "version": version, "since": since})
        answers = self._ask(f"/stats?{query}", 2.0, _checked_stats)
        if not answers:
            return None
        total: dict = {key: sum(a[key] for a in answers) for key in SUMMED}
        with_buckets = [a for a in answers if "latency_buckets" in a]
        buckets = latency.merge(a["latency_buckets"] for a in with_buckets)
        # Without histograms (an older gateway) an instance's answers cannot be merged, only
        # bounded: the p95 of the union is at most the largest p95 of its parts. A gate
        # judged on that bound may wait or fail, never pass a p95 it would not.
        parts = [latency.quantile_ms(buckets, 0.95)] if with_buckets else []
        parts += [a.get("p95_ms") for a in answers if "latency_buckets" not in a]
        known = [float(p) for p in parts if p is not None]
        total["p95_ms"] = max(known) if known else None
        total["latency_buckets"] = buckets
        total["instances"] = len(answers)
        return total

    # -- asking -----------------------------------------------------------------------------
    def _ask(self, path: str, timeout: float, parse: Callable[[dict], object], keyed: bool = False):  # noqa: ANN202
        """Every instance's answer to GET ``path``, parsed (a list, or by admin URL when
        ``keyed``); those that did not answer (or answered something else) are left out."""
        urls = self.urls()
        if not urls:
            return {} if keyed else []

        def one(url: str) -> object | None:
            data = http.get_json(url + path, timeout=timeout, headers=self.headers)
            if not isinstance(data, dict):
                return None
            try:
                return parse(data)
            except (AttributeError, TypeError, ValueError):
                return None

        if len(urls) == 1:
            answers = [one(urls[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(urls))) as pool:
                answers = list(pool.map(one, urls))
        if keyed:
            return {url: a for url, a in zip(urls, answers) if a is not None}
        return [a for a in answers if a is not None]


def _checked_stats(data: dict) -> dict:
    """A ``/stats`` answer whose counts are numbers (TypeError/ValueError otherwise)."""
    checked = dict(data)
    for key in SUMMED:
        checked[key] = float(data.get(key, 0)) if key == "abs_diff_sum" else int(data.get(key, 0))
    buckets = checked.pop("latency_buckets", None)
    if isinstance(buckets, dict):
        checked["latency_buckets"] = {int(k): int(v) for k, v in buckets.items()}
    if checked.get("p95_ms") is not None:
        checked["p95_ms"] = float(checked["p95_ms"])
    return checked


__all__ = ["GatewayFleet", "registered"]
