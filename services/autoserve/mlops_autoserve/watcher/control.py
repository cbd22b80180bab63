"""The watcher's own small HTTP listener: /health, /metrics and the registry webhook.

The webhook lives here, not in the gateway, because all it does is wake the control loop.
Headers are checked before the body is read, and the body is capped at 64 KiB: a caller
without a valid signature cannot make the watcher read or buffer anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher import webhook
from mlops_autoserve.watcher.reconciler import Reconciler

log = logging.getLogger("autoserve.control")

WEBHOOK_MAX_BODY = 64 * 1024


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ControlApi:
    def __init__(self, settings: AutoserveSettings, reconciler: Reconciler, metrics: AutoserveMetrics) -> None:
        self.settings = settings
        self.reconciler = reconciler
        self.metrics = metrics

    def app(self) -> web.Application:
        app = web.Application(client_max_size=WEBHOOK_MAX_BODY)
        app.add_routes([
            web.get("/health", self.health),
            web.get("/metrics", self.metrics_page),
            web.get("/envs", self.envs_page),
            web.post("/webhooks/mlflow", self.webhook),
        ])
        return app

    async def health(self, request: web.Request) -> web.Response:
        """Stale when cycles stop *or* keep failing (a loop that runs but cannot act)."""
        now = time.time()
        age = now - self.metrics.last_reconcile._value.get()  # noqa: SLF001 - our own gauge
        failing_for = self.reconciler.failing_since and now - self.reconciler.failing_since
        limit = max(30.0, 5 * self.settings.health_interval)
        problems = []
        if age >= limit:
            problems.append(f"no reconcile cycle for {age:.0f} s")
        if failing_for and failing_for >= limit:
            problems.append(f"cycles failing for {failing_for:.0f} s: {self.reconciler.last_cycle_error}")
        body = {"status": "stale" if problems else "ok", "last_reconcile_age_s": round(age, 1),
                "problems": problems, "routes": len(self.reconciler.routes)}
        return web.json_response(body, status=503 if problems else 200)

    async def metrics_page(self, request: web.Request) -> web.Response:
        payload = generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def envs_page(self, request: web.Request) -> web.Response:
        """Built environments: key, where, size, last use, in use (``mlops serve envs``)."""
        environments = self.reconciler.environments
        if environments is None:
            return web.json_response({"env_manager": self.settings.env_manager, "environments": []})
        in_use = {d.env for d in await asyncio.to_thread(self.reconciler.runtime.list) if d.env}
        envs = await asyncio.to_thread(environments.list, in_use)
        return web.json_response({"env_manager": self.settings.env_manager, "runtime": self.settings.runtime,
                                  "environments": [e.to_dict() for e in envs]})

    async def webhook(self, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > WEBHOOK_MAX_BODY:
            return error(413, f"webhook body over {WEBHOOK_MAX_BODY // 1024} KiB")
        secret = self.settings.webhook_secret
        if secret:
            problem = webhook.check_headers(request.headers, self.settings.webhook_max_age)
            if problem:
                log.warning("webhook rejected", extra={"reason": problem})
                return error(401, f"webhook rejected: {problem}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"webhook body over {WEBHOOK_MAX_BODY // 1024} KiB")
        if secret:
            problem = webhook.verify(secret, request.headers, body, self.settings.webhook_max_age)
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
