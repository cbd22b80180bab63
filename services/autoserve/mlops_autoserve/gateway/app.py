"""The gateway: the data-plane routes, and the pieces they are made of.

``/serve/{model}/{alias}/invocations`` goes to a ready replica of the version the route
table (published by the watcher, :mod:`routetable`) names. Before any backend is asked:

* a Host header that is no host[:port] (400), auth (bearer token, compared in constant
  time), then a declared body over ``max_body_mb`` (413), an unknown route (404), a route
  not ready (503), a route with ``max_inflight`` requests in flight (429).
  ``Expect: 100-continue`` is answered only after these checks: a refused upload is never
  invited;
* the body, read under the shared body budget (503 + ``Retry-After`` past it), the size
  cap (413) and ``client_body_timeout`` (408, connection closed). A route's in-flight slot
  is taken only once its body is in.

Then :class:`proxy.Proxy` sends it (retry, timeout, answer cap), :class:`shadows.ShadowCopies`
copies it, :class:`payloadlog.PayloadLog` samples it. The gateway keeps serving the last
table while no watcher runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from dataclasses import replace
from typing import Protocol

from aiohttp import web

from mlops_autoserve.gateway.accounting import AnswerCounters
from mlops_autoserve.gateway.admin import AdminPages, bearer_ok
from mlops_autoserve.gateway.batcher import Batcher
from mlops_autoserve.gateway.limits import (
    BodyBudget,
    BodyReader,
    BodyTimeout,
    BodyTooLarge,
    LimitCounter,
    OverBudget,
)
from mlops_autoserve.gateway.listener import Guards, ListenLimits, guards_for
from mlops_autoserve.gateway.memory import Trimmer
from mlops_autoserve.gateway.modelinfo import ModelInfo
from mlops_autoserve.gateway.modelpages import ModelPages
from mlops_autoserve.gateway.payloadlog import PayloadLog
from mlops_autoserve.gateway.pool import ReplicaPool
from mlops_autoserve.gateway.proxy import Proxy
from mlops_autoserve.gateway.recent import RecentAnswers
from mlops_autoserve.gateway.responses import error, unauthorized
from mlops_autoserve.gateway.shadows import ShadowCopies
from mlops_autoserve.gateway.v2 import V2Routes
from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.routetable import RouteEntry, TableFile, table_path
from mlops_autoserve.settings import GatewaySettings
from mlops_autoserve.v2protocol import V2Error as TranslationError

log = logging.getLogger("autoserve.gateway")

FORWARDED_HEADERS = ("Content-Type", "Accept")
TABLE_POLL_S = 0.1
# RFC 9112 3.2: a Host that is not uri-host[:port] gets 400 (aiohttp takes "a b" or "[::1").
VALID_HOST = re.compile(r"(\[[0-9A-Za-z:.%~_-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(:[0-9]*)?")


class Translation(Protocol):
    """A caller's protocol on top of MLflow's (:mod:`gateway.v2`): one per request."""

    def request(self, body: bytes | None, version: int | None) -> bytes:
        """The backend's request body (TranslationError: the caller's own mistake)."""

    def answer(self, response: web.Response) -> web.Response:
        """The caller's answer for the backend's (or the gateway's own) answer."""


class Gateway:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None,
                 instance: dict | None = None) -> None:
        self.settings = s = settings
        self.metrics = metrics or GatewayMetrics()
        self.table = TableFile(table_path(s.state_dir))
        self.coin = random.Random()  # shadow copies, a rollout's share and the payload log's sample
        self.limits = LimitCounter(self.metrics)
        self.pool = ReplicaPool(self.metrics, s.eject_after)
        self.trimmer = Trimmer()
        self.proxy = Proxy(self.pool, s.request_timeout, s.max_response_bytes, self.limits, self.trimmer.after)
        self.recent = RecentAnswers()
        self.answers = AnswerCounters(self.metrics)
        self.budget = BodyBudget(s.max_inflight_bytes)
        self.shadows = ShadowCopies(self.pool, self.proxy, self.recent, self.metrics, self.limits, self.coin,
                                    max_copies=s.shadow_queue, max_bytes=s.shadow_queue_bytes,
                                    workers=s.shadow_workers)
        self.payload_log = PayloadLog(s, self.metrics, self.coin)
        self.model_info = ModelInfo(s.state_dir)
        m = self.metrics
        self.batcher = Batcher(
            lambda route, body, headers: self.proxy.send(route, "POST", "/invocations", body, headers, self._latest),
            on_batch=lambda rows, n, held: (m.batch_rows.observe(rows), m.batch_requests.observe(n),
                                            m.batch_held.observe(held)),
            on_resent=lambda reason: m.batches_resent.labels(reason).inc())
        self.admin = AdminPages(self.table, self.pool, self.recent, self.metrics, s.admin_token, instance,
                                lambda: self.batcher.not_batchable)
        self.route_inflight: dict[tuple[str, str], int] = {}
        self.guards: Guards | None = None
        self._tasks: list[asyncio.Task] = []

    # -- applications --------------------------------------------------------------------
    def app(self) -> web.Application:
        # client_max_size: a chunked body without Content-Length is cut off at the limit too.
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.add_routes([
            web.post("/serve/{model}/{alias}/invocations", self.invocations, expect_handler=self._expect),
            web.get("/serve/{model}/{alias}/ping", self.ping),
            web.get("/health", self.admin.health),
            *ModelPages(self).routes(),
            *V2Routes(self).routes(),
        ])
        s = self.settings
        self.guards = guards_for(app, ListenLimits(s.max_connections, s.header_timeout, s.keepalive_timeout),
                                 self.limits)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    def admin_app(self) -> web.Application:
        return self.admin.app()

    async def _open(self, app: web.Application) -> None:
        if self.table.refresh():  # the table at start is applied too (its serial on /metrics)
            self._loaded()
        self._tasks = [asyncio.create_task(self._follow_table()),
                       asyncio.create_task(self.pool.readmit(self.proxy.client, self.settings.readmit_interval)),
                       asyncio.create_task(self._gauges()), *self.shadows.start()]
        self.payload_log.start()

    async def _close(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.payload_log.stop)
        await self.proxy.close()

    async def _follow_table(self) -> None:
        while True:
            if self.table.refresh():
                self._loaded()
            await asyncio.sleep(TABLE_POLL_S)

    def _loaded(self) -> None:
        """A new table: forget the backends and routes it no longer has, show its serial."""
        table = self.table.table
        self.pool.forget_all_but({r.url for route in table.routes for r in _all_replicas(route)})
        routes = {(route.model, route.alias) for route in table.routes}
        self.answers.keep_only(routes)
        self.recent.keep_only(routes)
        self.shadows.keep_only({(r.model, r.shadow.alias, str(r.shadow.version)) for r in table.routes if r.shadow})
        self.model_info.keep_only({(r.model, int(v)) for r in table.routes for v in _versions(r)})
        self.batcher.forget_all_but({(r.model, r.alias, int(v)) for r in table.routes for v in _versions(r)})
        self.metrics.table_serial.set(table.serial)
        log.info("route table loaded", extra={"serial": table.serial, "routes": len(table.routes)})

    async def _gauges(self) -> None:
        while True:
            self.metrics.connections.set(len(self.guards.open) if self.guards else 0)
            self.metrics.body_bytes_inflight.set(self.budget.used)
            self.proxy.client.close_expired()
            await asyncio.sleep(1.0)

    # -- data routes ---------------------------------------------------------------------
    async def invocations(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "POST", "/invocations")

    async def ping(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "GET", "/ping")

    def names(self, request: web.Request) -> tuple[str, str]:
        """(model, alias) of a data route; a V2 route without /versions/{v} names the default alias."""
        info = request.match_info
        return info["model"], info.get("alias") or self.settings.v2_default_alias

    def known_route(self, request: web.Request) -> tuple[RouteEntry | None, web.Response | None]:
        """The route a request names, or the answer instead: 401 without the bearer token,
        404 for a route the table does not have (for the pages about a route, not /invocations)."""
        if not bearer_ok(request, self.settings.auth_token):
            return None, unauthorized()
        model, alias = self.names(request)
        route = self.table.table.get(model, alias)
        if route is None:
            return None, error(404, f"no endpoint for {model}@{alias}", model=model, alias=alias)
        return route, None

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: invite the body only when the request would be taken."""
        started = time.perf_counter()
        model, alias = self.names(request)
        route = self.table.table.get(model, alias)
        problem = self._refuse(request, model, alias, route)
        if problem is not None:
            problem.force_close()  # the client holds the body back: do not wait for it
            # The handler never runs for it: counted here, as any other answer (curl sends
            # Expect for large bodies: without this its refusals would not be counted).
            self._count(model, alias, route, problem, time.perf_counter() - started)
            return problem
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own expect handler: the answer has not started
            return None
        return error(417, "only Expect: 100-continue is understood")

    async def _proxy(self, request: web.Request, method: str, path: str,
                     translation: Translation | None = None) -> web.StreamResponse:
        """``translation``: the caller speaks another protocol (V2): its body is translated
        for the backend, the backend's answer back; metrics, shadows and the payload log see
        what the backend received and answered."""
        started = time.perf_counter()
        model, alias = self.names(request)
        route = self.table.table.get(model, alias)
        reader = BodyReader(self.budget, self.settings.max_body_bytes, self.settings.client_body_timeout)
        response = None
        try:
            response, body = await self._answer(request, method, path, model, alias, route, reader, translation)
            if path == "/invocations":
                seconds = time.perf_counter() - started
                answered_by = self._count(model, alias, route, response, seconds)
                if answered_by is not None and body is not None:
                    self.payload_log.offer(model, alias, answered_by, body, response.body, response.status, seconds)
            return response
        finally:
            self.trimmer.after(max(reader.seen, len(response.body or b"") if response is not None else 0))
            reader.release()

    def _count(self, model: str, alias: str, route: RouteEntry | None, response: web.Response,
               seconds: float) -> str | None:
        """Count an answer to ``/invocations``; the version it is counted under (None: unknown route)."""
        if route is None:  # labels come from the table, never from the URL
            self.answers.unknown(response.status, seconds)
            return None
        answered_by = response.headers.get("X-Model-Version", str(route.version or ""))
        self.answers.observe(model, alias, answered_by, response.status, seconds)
        self.recent.record(model, alias, answered_by, response.status, seconds)
        return answered_by

    async def _answer(self, request: web.Request, method: str, path: str, model: str, alias: str,
                      route: RouteEntry | None, reader: BodyReader,
                      translation: Translation | None = None) -> tuple[web.Response, bytes | None]:
        """The answer, and the request body when one was read (for the payload log)."""
        problem = self._refuse(request, model, alias, route)
        if problem is not None:
            return problem, None
        body = None
        if method == "POST":
            try:
                body = await reader.read(request)
            except BodyTooLarge:
                self.limits.hit("body_size")
                return self._closing(error(413, f"request body over {self.settings.max_body_mb:g} MB",
                                           model=model, alias=alias)), None
            except OverBudget:
                self.limits.hit("body_budget")
                return self._closing(error(503, "the gateway holds too many request bodies; retry",
                                           headers={"Retry-After": "1"}, model=model, alias=alias)), None
            except BodyTimeout:
                self.limits.hit("body_timeout")
                return self._closing(error(408, f"request body not received within "
                                                f"{self.settings.client_body_timeout:g} s", model=model,
                                           alias=alias)), None
        key = (model, alias)
        if self.route_inflight.get(key, 0) >= self.settings.max_inflight:
            return self._full(model, alias), None
        self.route_inflight[key] = self.route_inflight.get(key, 0) + 1
        try:
            headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
            target = self._canary_or(route)
            if translation is not None:
                try:
                    body = translation.request(body, target.version)
                except TranslationError as exc:
                    return error(exc.status, str(exc), model=model, alias=alias), None
                headers = {"Content-Type": "application/json"}
            if route.batching is not None and path == "/invocations" and body:
                response = await self.batcher.send(target, route.batching, body, headers)
            else:
                response = await self.proxy.send(target, method, path, body, headers, self._latest)
            # Copies of what the alias's own version answered: a canary's answers are not copied
            # (during a rollout with a comparison gate the shadow is that very canary).
            if route.shadow is not None and target is route and path == "/invocations" and response.status == 200:
                self.shadows.offer(route, body, headers, response.body)  # after the answer: never waited for
            if translation is not None:
                response = translation.answer(response)
            return response, body
        finally:
            self.route_inflight[key] -= 1

    @staticmethod
    def _closing(response: web.Response) -> web.Response:
        """An answer after which the connection is closed. What is left of the body is read
        and dropped for at most aiohttp's lingering time (2 s), so the caller gets the answer
        rather than a reset; none of it is kept."""
        response.force_close()
        return response

    def _latest(self, route: RouteEntry) -> RouteEntry:
        return self.table.table.get(route.model, route.alias) or route

    def _canary_or(self, route: RouteEntry) -> RouteEntry:
        """During a rollout, the candidate's share of the requests goes to the candidate."""
        canary = route.canary
        if canary is None or not canary.replicas or self.coin.random() * 100 >= canary.percent:
            return route
        return replace(route, version=canary.version, replicas=canary.replicas, canary=None)

    def _full(self, model: str, alias: str) -> web.Response:
        return error(429, f"{model}@{alias} has {self.settings.max_inflight} requests in flight",
                     headers={"Retry-After": "1"}, model=model, alias=alias)

    def _refuse(self, request: web.Request, model: str, alias: str, route: RouteEntry | None) -> web.Response | None:
        """Every answer that needs no backend: bad Host, auth, size, unknown route, not ready, full."""
        if not VALID_HOST.fullmatch(request.headers.get("Host", "")):
            return error(400, "invalid Host header")
        if not bearer_ok(request, self.settings.auth_token):
            return unauthorized()
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            self.limits.hit("body_size")
            return error(413, f"request body over {self.settings.max_body_mb:g} MB", model=model, alias=alias)
        if route is None:
            return error(404, f"no endpoint for {model}@{alias}", model=model, alias=alias)
        if route.version is None or not route.replicas:
            reason = route.last_error or f"version {route.desired_version} is {route.state}"
            return error(503, "endpoint not ready", model=model, alias=alias, state=route.state, reason=reason)
        if self.route_inflight.get((model, alias), 0) >= self.settings.max_inflight:
            return self._full(model, alias)
        return None


def _all_replicas(route: RouteEntry):  # noqa: ANN202
    yield from route.replicas
    if route.canary is not None:
        yield from route.canary.replicas
    if route.shadow is not None:
        yield from route.shadow.replicas


def _versions(route: RouteEntry):  # noqa: ANN202
    for version in (route.version, route.canary.version if route.canary else None,
                    route.shadow.version if route.shadow else None):
        if version is not None:
            yield version
