"""One stable port in front of every deployment: /serve/{model}/{alias}/invocations.

Payloads and content types pass through untouched; the backend's status and body come
back with ``X-Model-Version``. Backend connections are pooled and kept alive (no
per-request connection set-up), with TCP_NODELAY on both sides (aiohttp's default).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlops_autoserve import webhook
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.reconciler import Reconciler, Route
from mlops_autoserve.settings import AutoserveSettings

log = logging.getLogger("autoserve.gateway")

FORWARDED_HEADERS = ("Content-Type", "Accept")


def error(status: int, message: str, **fields: object) -> web.Response:
    return web.json_response({"error": message, **fields}, status=status)


class Gateway:
    def __init__(self, settings: AutoserveSettings, reconciler: Reconciler, metrics: AutoserveMetrics) -> None:
        self.settings = settings
        self.reconciler = reconciler
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None
        self._counters: dict[tuple[str, str, str, str], object] = {}  # label children, cached off the hot path
        self._timers: dict[tuple[str, str], object] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.add_routes([
            web.post("/serve/{model}/{alias}/invocations", self.invocations),
            web.get("/serve/{model}/{alias}/ping", self.ping),
            web.get("/endpoints", self.endpoints),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics_page),
            web.post("/webhooks/mlflow", self.webhook),
        ])
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60, force_close=False)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )

    async def _close(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    # -- proxy ---------------------------------------------------------------------------
    def _route(self, request: web.Request) -> Route | web.Response:
        model, alias = request.match_info["model"], request.match_info["alias"]
        route = self.reconciler.routes.get((model, alias))
        if route is None:
            return error(404, f"no endpoint for {model}@{alias}", model=model, alias=alias)
        if route.deployment is None:
            reason = route.last_error or f"version {route.desired_version} is {route.state}"
            return error(503, "endpoint not ready", model=model, alias=alias, state=route.state, reason=reason)
        return route

    async def invocations(self, request: web.Request) -> web.Response:
        return await self._proxy(request, "POST", "/invocations")

    async def ping(self, request: web.Request) -> web.Response:
        return await self._proxy(request, "GET", "/ping")

    async def _proxy(self, request: web.Request, method: str, path: str) -> web.Response:
        started = time.perf_counter()
        route = self._route(request)
        if isinstance(route, web.Response):
            return route
        body = await request.read() if method == "POST" else None
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        response = await self._send(route, method, path, body, headers)
        if path == "/invocations":
            self._observe(route, response, time.perf_counter() - started)
        return response

    def _observe(self, route: Route, response: web.Response, seconds: float) -> None:
        labels = (route.model, route.alias, response.headers.get("X-Model-Version", ""), str(response.status))
        counter = self._counters.get(labels)
        if counter is None:
            counter = self._counters[labels] = self.metrics.requests_total.labels(*labels)
        counter.inc()
        timer = self._timers.get(labels[:2])
        if timer is None:
            timer = self._timers[labels[:2]] = self.metrics.request_duration.labels(*labels[:2])
        timer.observe(seconds)

    async def _send(self, route: Route, method: str, path: str, body: bytes | None, headers: dict) -> web.Response:
        """Forward to the routed deployment; if it vanished mid-switch, retry once on the new route."""
        for attempt in (1, 2):
            deployment = route.deployment
            inflight = self.reconciler.inflight
            inflight[deployment.key] += 1
            try:
                async with self.session.request(method, deployment.url + path, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    out_headers = {"X-Model-Version": str(deployment.key.version)}
                    if "Content-Type" in resp.headers:
                        out_headers["Content-Type"] = resp.headers["Content-Type"]
                    return web.Response(status=resp.status, body=payload, headers=out_headers)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                latest = self.reconciler.routes.get((route.model, route.alias))
                if attempt == 1 and latest and latest.deployment and latest.deployment.ident != deployment.ident:
                    route = latest
                    continue
                log.warning("backend unreachable", extra={"model": route.model, "alias": route.alias,
                                                          "version": deployment.key.version, "error": str(exc)})
                return error(502, f"deployment of {route.model}@{route.alias} is unreachable",
                             model=route.model, alias=route.alias, version=deployment.key.version)
            finally:
                inflight[deployment.key] -= 1
        raise AssertionError("unreachable")

    # -- operations ----------------------------------------------------------------------
    async def endpoints(self, request: web.Request) -> web.Response:
        return web.json_response([endpoint_json(r) for r in self.reconciler.routes.values()])

    async def health(self, request: web.Request) -> web.Response:
        age = time.time() - self.metrics.last_reconcile._value.get()  # noqa: SLF001 - our own gauge
        fresh = age < max(30.0, 5 * self.settings.health_interval)
        body = {"status": "ok" if fresh else "stale", "last_reconcile_age_s": round(age, 1),
                "endpoints": len(self.reconciler.routes)}
        return web.json_response(body, status=200 if fresh else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        payload = generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.settings.webhook_secret:
            problem = webhook.verify(self.settings.webhook_secret, request.headers, body, self.settings.webhook_max_age)
            if problem:
                log.warning("webhook rejected", extra={"reason": problem})
                return error(401, f"webhook rejected: {problem}")
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            return error(400, "webhook body is not JSON")
        if not isinstance(event, dict):
            return error(400, "webhook body must be a JSON object")
        name = f"{event.get('entity')}.{event.get('action')}"
        self.reconciler.wake(read_registry=True)
        log.info("webhook received", extra={"event": name, "data": event.get("data")})
        return web.json_response({"status": "accepted", "event": name})


def endpoint_json(route: Route) -> dict:
    return {
        "model": route.model,
        "alias": route.alias,
        "version": route.version,
        "desired_version": route.desired_version,
        "state": route.state,
        "url": route.deployment.url if route.deployment else None,
        "since": datetime.fromtimestamp(route.since, tz=timezone.utc).isoformat(timespec="seconds"),
        "last_error": route.last_error,
    }
