"""The admin port: what operators and the watcher read (``/endpoints``, ``/inflight``,
``/load``, ``/stats``, ``/metrics``, ``/health``).

It listens on ``--admin-host`` (127.0.0.1 unless configured), apart from the data port. With
``--admin-token-file`` every page but ``/health`` needs ``Authorization: Bearer <token>``.
What it shows: the route table (models, aliases, versions, backend URLs), per-backend load
and the gateway's metrics; no request or answer bodies, no tokens.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from datetime import datetime, timezone

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlops_autoserve.gateway.pool import ReplicaPool
from mlops_autoserve.gateway.recent import RecentAnswers
from mlops_autoserve.gateway.responses import error
from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.routetable import RouteEntry, TableFile

OPEN_PAGES = ("/health",)


def bearer_ok(request: web.BaseRequest, token: str | None) -> bool:
    """Is the request's bearer token ``token`` (compared in constant time)? True when no token is set."""
    if token is None:
        return True
    return hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode())


class AdminPages:
    def __init__(self, table: TableFile, pool: ReplicaPool, recent: RecentAnswers, metrics: GatewayMetrics,
                 token: str | None, instance: dict | None = None,
                 not_batchable: Callable[[], set[tuple[str, str, int]]] = set) -> None:
        self.table, self.pool, self.recent, self.metrics, self.token = table, pool, recent, metrics, token
        self.instance = instance or {}
        self.not_batchable = not_batchable  # (model, alias, version) whose answers could not be split by row

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._auth])
        app.add_routes([
            web.get("/endpoints", self.endpoints),
            web.get("/inflight", self.inflight),
            web.get("/load", self.load),
            web.get("/stats", self.stats),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics_page),
        ])
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
        if request.path not in OPEN_PAGES and not bearer_ok(request, self.token):
            return error(401, "missing or wrong admin bearer token", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def endpoints(self, request: web.Request) -> web.Response:
        return web.json_response([self.endpoint_json(r) for r in self.table.table.routes])

    def endpoint_json(self, route: RouteEntry) -> dict:
        replicas = [{"url": r.url, "index": r.index, "inflight": self.pool.state(r.url).inflight,
                     "state": "ejected" if self.pool.state(r.url).ejected_at is not None else "ready"}
                    for r in route.replicas]
        return {
            "model": route.model,
            "alias": route.alias,
            "version": route.version,
            "desired_version": route.desired_version,
            "state": route.state,
            "url": route.replicas[0].url if route.replicas else None,
            "replicas": replicas,
            "ready_replicas": sum(1 for r in replicas if r["state"] == "ready"),
            "since": datetime.fromtimestamp(route.since, tz=timezone.utc).isoformat(timespec="seconds"),
            "last_error": route.last_error,
            "problems": list(route.problems),
            "canary": None if route.canary is None else {
                "version": route.canary.version, "percent": route.canary.percent,
                "replicas": len(route.canary.replicas)},
            "scale": None if route.scale is None else {
                "wanted": route.scale.wanted, "min": route.scale.min, "max": route.scale.max, "last": route.scale.last,
                "seconds_ago": None if route.scale.at is None else round(max(0.0, time.time() - route.scale.at), 1)},
            "building": None if route.building is None else {
                "version": route.building.version, "env": route.building.env, "progress": route.building.progress,
                "seconds": round(max(0.0, time.time() - route.building.since), 1)},
            "batching": None if route.batching is None else {
                "max_rows": route.batching.max_rows, "max_wait_ms": route.batching.max_wait_ms,
                "batchable": (route.model, route.alias, int(route.version or 0)) not in self.not_batchable()},
            "shadow": None if route.shadow is None else {
                "alias": route.shadow.alias, "version": route.shadow.version, "percent": route.shadow.percent,
                "compare": route.shadow.compare, "replicas": len(route.shadow.replicas)},
        }

    async def stats(self, request: web.Request) -> web.Response:
        """Answers of one (model, alias, version) since a unix time: a rollout gate's figures."""
        q = request.query
        try:
            since = float(q.get("since", "0"))
        except ValueError:
            return error(400, "since must be a unix time")
        if not all(q.get(k) for k in ("model", "alias", "version")):
            return error(400, "model, alias and version are required")
        return web.json_response(self.recent.since(q["model"], q["alias"], q["version"], since))

    async def inflight(self, request: web.Request) -> web.Response:
        """Requests in flight per backend URL: what the watcher waits on before stopping one."""
        return web.json_response(self.pool.inflight())

    async def load(self, request: web.Request) -> web.Response:
        """Per backend URL: requests in flight and requests sent so far (a counter): what the
        watcher's autoscaler samples."""
        return web.json_response(self.pool.load())

    async def health(self, request: web.Request) -> web.Response:
        table = self.table.table
        body = {"status": "ok", "table_serial": table.serial, "routes": len(table.routes),
                "table_age_s": round(time.time() - table.published_at, 1) if table.published_at else None,
                "table_error": self.table.error, **self.instance}
        return web.json_response(body)

    async def metrics_page(self, request: web.Request) -> web.Response:
        payload = generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
