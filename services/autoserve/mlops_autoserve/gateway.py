"""The data plane: one stable port in front of every deployment, a process of its own.

``/serve/{model}/{alias}/invocations`` goes to a ready replica of the version the route
table (published by the watcher, :mod:`routetable`) names. The gateway keeps serving the
last table when no watcher runs, so a watcher crash or restart costs no request.

What it holds against (each answer is JSON and counted in ``autoserve_requests_total``):

* a body over ``max_body_mb``: 413 from the Content-Length header, before reading it;
* too many requests in flight on one route: 429 with ``Retry-After``;
* a backend that hangs: 504 after ``request_timeout``;
* a refused or reset connection before any response byte: retried once on another
  replica, or on the same one over a fresh connection when it is the only one (a
  prediction has no side effects); a response that has started is never retried;
* a replica that fails ``eject_after`` times in a row, or lets one request time out,
  leaves the rotation until its ``GET /ping`` answers again;
* pooled backend connections kept alive 4 s, under uvicorn's 5 s, so none goes stale.

Admin endpoints (``/endpoints``, ``/inflight``, ``/load``, ``/stats``, ``/metrics``) listen on their own port.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import hmac
import logging
import random
import signal
import time
from dataclasses import replace
from datetime import datetime, timezone

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.payloadlog import PayloadLog
from mlops_autoserve.routetable import (
    Replica,
    RouteEntry,
    ShadowTarget,
    TableFile,
    table_path,
)
from mlops_autoserve.settings import GatewaySettings
from mlops_autoserve.shadowing import Comparison, compare
from mlops_toolkit.errors import MlopsError, ValidationError

log = logging.getLogger("autoserve.gateway")

FORWARDED_HEADERS = ("Content-Type", "Accept")
BACKEND_KEEPALIVE_S = 4.0  # mlflow models serve (uvicorn) closes idle connections after 5 s
TABLE_POLL_S = 0.1
# The model and alias label of answers to routes the table does not have (404s, 401s before
# a route is known): one series, whatever URLs callers invent.
UNKNOWN = "_unknown"
PING_TIMEOUT_S = 1.0


def error(status: int, message: str, headers: dict | None = None, **fields: object) -> web.Response:
    return web.json_response({"error": message, **fields}, status=status, headers=headers)


class _ReplicaState:
    """What the gateway knows of one backend: in flight, requests sent, failures in a row, ejected."""

    __slots__ = ("inflight", "requests", "failures", "ejected_at")

    def __init__(self) -> None:
        self.inflight = 0
        self.requests = 0  # ever sent (callers' and shadow copies): the watcher's autoscaler takes rates from it
        self.failures = 0
        self.ejected_at: float | None = None

    def enter(self) -> None:
        self.inflight += 1
        self.requests += 1


class ShadowCopies:
    """Copies of answered requests, sent to the shadow alias off the request path.

    A bounded queue: when it is full a copy is dropped and counted, never waited for. Each
    copy goes to the shadow's least-loaded replica with the gateway's request timeout; its
    answer is compared with the one the caller got (``shadowing.compare``).
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.metrics = gateway.metrics
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=gateway.settings.shadow_queue)

    def start(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self._work()) for _ in range(self.gateway.settings.shadow_workers)]

    def offer(self, route: RouteEntry, body: bytes | None, headers: dict, answer: bytes) -> None:
        shadow = route.shadow
        if shadow is None or self.gateway.coin.random() * 100 >= shadow.percent:
            return
        try:
            self.queue.put_nowait((route.model, route.alias, shadow, body, headers, answer))
        except asyncio.QueueFull:
            self._count(route.model, shadow, "dropped")

    async def _work(self) -> None:
        while True:
            model, alias, shadow, body, headers, answer = await self.queue.get()
            try:
                await self._send(model, alias, shadow, body, headers, answer)
            except Exception:  # noqa: BLE001 - a shadow copy must never take a worker down
                log.exception("shadow copy failed", extra={"model": model, "alias": shadow.alias})
                self._count(model, shadow, "error")
            finally:
                self.queue.task_done()

    async def _send(self, model: str, alias: str, shadow: ShadowTarget, body: bytes | None, headers: dict,
                    answer: bytes) -> None:
        """Send one copy; ``alias`` is the route it was copied from (whose answer it is compared with)."""
        replica = self.gateway._pick(shadow, set())  # the same choice as for callers: least loaded, in rotation
        if replica is None:
            self._count(model, shadow, "error")
            return
        state = self.gateway._state(replica.url)
        state.enter()
        started = time.perf_counter()
        try:
            async with self.gateway.session.post(replica.url + "/invocations", data=body, headers=headers) as resp:
                payload = await resp.read()
                status = resp.status
        except asyncio.TimeoutError:
            self._count(model, shadow, "timeout")
            return
        except aiohttp.ClientError:
            self._count(model, shadow, "error")
            return
        finally:
            state.inflight -= 1
        self.metrics.shadow_latency.labels(model, shadow.alias).observe(time.perf_counter() - started)
        if status != 200:
            self._count(model, shadow, "error")
            return
        result = compare(answer, payload, shadow.compare)
        labels = (model, shadow.alias, str(shadow.version))
        if result.kind == "mismatch":
            self._count(model, shadow, "mismatch")
            return
        self._count(model, shadow, "ok")
        self.gateway.recent.compared(model, alias, str(shadow.version), result)
        self.metrics.shadow_compared.labels(*labels).inc(result.rows)
        if result.kind == "classification":
            self.metrics.shadow_agreement.labels(*labels).inc(result.agree)
        else:
            self.metrics.shadow_abs_diff.labels(*labels).inc(result.abs_diff_sum)

    def _count(self, model: str, shadow: ShadowTarget, result: str) -> None:
        self.metrics.shadow_requests.labels(model, shadow.alias, str(shadow.version), result).inc()


class RecentAnswers:
    """The last answers per (model, alias, version), and the last shadow comparisons of a
    version against the answers of an alias: what a rollout's gate is judged on."""

    def __init__(self, keep: int = 20_000) -> None:
        self.keep = keep
        self._answers: dict[tuple[str, str, str], collections.deque] = {}
        self._comparisons: dict[tuple[str, str, str], collections.deque] = {}

    def compared(self, model: str, alias: str, version: str, result: Comparison) -> None:
        """``version`` (a shadow) answered a copy of ``alias``'s request: keep how the two compared."""
        key = (model, alias, version)
        found = self._comparisons.get(key)
        if found is None:
            found = self._comparisons[key] = collections.deque(maxlen=self.keep)
        found.append((time.time(), result))

    def record(self, model: str, alias: str, version: str, status: int, seconds: float) -> None:
        key = (model, alias, version)
        answers = self._answers.get(key)
        if answers is None:
            answers = self._answers[key] = collections.deque(maxlen=self.keep)
        answers.append((time.time(), status, seconds))

    def since(self, model: str, alias: str, version: str, start: float) -> dict:
        recent = [(status, seconds) for t, status, seconds in self._answers.get((model, alias, version), ()) if t >= start]
        latencies = sorted(seconds for _, seconds in recent)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] * 1000 if latencies else None
        compared = [c for t, c in self._comparisons.get((model, alias, version), ()) if t >= start]
        labels = [c for c in compared if c.kind == "classification"]
        numbers = [c for c in compared if c.kind == "regression"]
        return {"requests": len(recent), "errors": sum(1 for status, _ in recent if status >= 500), "p95_ms": p95,
                "labels_compared": sum(c.rows for c in labels), "labels_agreed": sum(c.agree for c in labels),
                "numbers_compared": sum(c.rows for c in numbers), "abs_diff_sum": sum(c.abs_diff_sum for c in numbers),
                "nonfinite": sum(c.nonfinite for c in numbers)}


class Gateway:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or GatewayMetrics()
        self.table = TableFile(table_path(settings.state_dir))
        self.session: aiohttp.ClientSession | None = None
        self.fresh_session: aiohttp.ClientSession | None = None
        self.replicas: dict[str, _ReplicaState] = {}  # by backend URL
        self.route_inflight: dict[tuple[str, str], int] = {}
        self._counters: dict[tuple[str, str, str, str], object] = {}
        self._timers: dict[tuple[str, str], object] = {}
        self._tasks: list[asyncio.Task] = []
        self.coin = random.Random()  # shadow copies, a rollout's share and the payload log's sample
        self.shadows = ShadowCopies(self)
        self.recent = RecentAnswers()
        self.payload_log = PayloadLog(settings, self.metrics, self.coin)

    # -- applications --------------------------------------------------------------------
    def app(self) -> web.Application:
        # client_max_size: a chunked body without Content-Length is cut off at the limit too.
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.add_routes([
            web.post("/serve/{model}/{alias}/invocations", self.invocations),
            web.get("/serve/{model}/{alias}/ping", self.ping),
            web.get("/health", self.health),
        ])
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes([
            web.get("/endpoints", self.endpoints),
            web.get("/inflight", self.inflight_page),
            web.get("/load", self.load_page),
            web.get("/stats", self.stats_page),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics_page),
        ])
        return app

    async def _open(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=BACKEND_KEEPALIVE_S)
        options = {"auto_decompress": False, "skip_auto_headers": ("User-Agent",),
                   "timeout": aiohttp.ClientTimeout(total=self.settings.request_timeout, sock_connect=2)}
        self.session = aiohttp.ClientSession(connector=connector, **options)
        # Retries go over a new TCP connection: the pool may hold several connections to a
        # backend that restarted on the same port, all of them dead.
        self.fresh_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True), **options)
        self.table.refresh()
        self._tasks = [asyncio.create_task(self._follow_table()), asyncio.create_task(self._readmit()),
                       *self.shadows.start()]
        self.payload_log.start()

    async def _close(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.payload_log.stop)
        for session in (self.session, self.fresh_session):
            if session is not None:
                await session.close()

    async def _follow_table(self) -> None:
        while True:
            if self.table.refresh():
                table = self.table.table
                live = {r.url for route in table.routes for r in route.replicas}
                for url in list(self.replicas):
                    if url not in live and self.replicas[url].inflight == 0:
                        del self.replicas[url]
                self.metrics.table_serial.set(table.serial)
                log.info("route table loaded", extra={"serial": table.serial, "routes": len(table.routes)})
            await asyncio.sleep(TABLE_POLL_S)

    async def _readmit(self) -> None:
        """Ping ejected replicas; one good GET /ping puts a replica back in rotation."""
        while True:
            await asyncio.sleep(self.settings.readmit_interval)
            for url, state in list(self.replicas.items()):
                if state.ejected_at is None:
                    continue
                try:
                    async with self.session.get(url + "/ping", timeout=aiohttp.ClientTimeout(total=PING_TIMEOUT_S)) as r:
                        ok = r.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    state.ejected_at, state.failures = None, 0
                    log.info("replica re-admitted", extra={"url": url})

    # -- proxy ---------------------------------------------------------------------------
    async def invocations(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "POST", "/invocations")

    async def ping(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "GET", "/ping")

    async def _proxy(self, request: web.Request, method: str, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        model, alias = request.match_info["model"], request.match_info["alias"]
        route = self.table.table.get(model, alias)
        version = str(route.version) if route and route.version is not None else ""
        response, body = await self._answer(request, method, path, model, alias, route)
        if path == "/invocations":
            seconds = time.perf_counter() - started
            if route is None:  # labels come from the table, never from the URL: bounded by the table
                self._observe(UNKNOWN, UNKNOWN, "", response.status, seconds)
                return response
            answered_by = response.headers.get("X-Model-Version", version)
            self._observe(model, alias, answered_by, response.status, seconds)
            self.recent.record(model, alias, answered_by, response.status, seconds)
            if body is not None:
                self.payload_log.offer(model, alias, answered_by, body, response.body, response.status, seconds)
        return response

    async def _answer(self, request: web.Request, method: str, path: str, model: str, alias: str,
                      route: RouteEntry | None) -> tuple[web.Response, bytes | None]:
        """The answer, and the request body when one was read (for the payload log)."""
        problem = self._refuse(request, model, alias, route)
        if problem is not None:
            return problem, None
        key = (model, alias)
        self.route_inflight[key] = self.route_inflight.get(key, 0) + 1
        try:
            try:
                body = await request.read() if method == "POST" else None
            except web.HTTPRequestEntityTooLarge:
                return error(413, f"request body over {self.settings.max_body_mb:g} MB", model=model, alias=alias), None
            headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
            target = self._canary_or(route)
            response = await self._send(target, method, path, body, headers)
            # Copies of what the alias's own version answered: a canary's answers are not copied
            # (during a rollout with a comparison gate the shadow is that very canary).
            if route.shadow is not None and target is route and path == "/invocations" and response.status == 200:
                self.shadows.offer(route, body, headers, response.body)  # after the answer: never waited for
            return response, body
        finally:
            self.route_inflight[key] -= 1

    def _canary_or(self, route: RouteEntry) -> RouteEntry:
        """During a rollout, the candidate's share of the requests goes to the candidate."""
        canary = route.canary
        if canary is None or not canary.replicas or self.coin.random() * 100 >= canary.percent:
            return route
        return replace(route, version=canary.version, replicas=canary.replicas, canary=None)

    def _refuse(self, request: web.Request, model: str, alias: str, route: RouteEntry | None) -> web.Response | None:
        """Every answer that needs no backend: auth, size, unknown route, not ready, full."""
        token = self.settings.auth_token
        if token is not None and not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                                         f"Bearer {token}".encode()):  # constant time
            return error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            return error(413, f"request body over {self.settings.max_body_mb:g} MB", model=model, alias=alias)
        if route is None:
            return error(404, f"no endpoint for {model}@{alias}", model=model, alias=alias)
        if route.version is None or not route.replicas:
            reason = route.last_error or f"version {route.desired_version} is {route.state}"
            return error(503, "endpoint not ready", model=model, alias=alias, state=route.state, reason=reason)
        if self.route_inflight.get((model, alias), 0) >= self.settings.max_inflight:
            return error(429, f"{model}@{alias} has {self.settings.max_inflight} requests in flight",
                         headers={"Retry-After": "1"}, model=model, alias=alias)
        return None

    def _pick(self, route: RouteEntry | ShadowTarget, exclude: set[str]) -> Replica | None:
        """Least outstanding requests among replicas in rotation, the lowest index on ties.

        Ties go to the same replica rather than round robin: at low load one warm process
        answers faster than two taking turns (measured with bench_gateway), and as soon as
        it has a request in flight the next one goes to another replica.
        """
        best, best_load, fallback = None, 0, None
        for replica in route.replicas:
            if replica.url in exclude:
                continue
            state = self._state(replica.url)
            if state.ejected_at is not None:
                fallback = fallback or replica
                continue
            if best is None or state.inflight < best_load:
                best, best_load = replica, state.inflight
                if best_load == 0:
                    break
        return best or fallback  # every replica ejected: try one anyway rather than fail outright

    def _state(self, url: str) -> _ReplicaState:
        state = self.replicas.get(url)
        if state is None:
            state = self.replicas[url] = _ReplicaState()
        return state

    async def _send(self, route: RouteEntry, method: str, path: str, body: bytes | None, headers: dict) -> web.Response:
        tried: set[str] = set()
        last_problem = "no replica"
        for attempt in range(2):  # the first try and one retry on another replica
            # The route as picked for this request (a rollout's candidate, maybe); a retry looks
            # at the latest table: a switch may have happened.
            latest = route if attempt == 0 else (self.table.table.get(route.model, route.alias) or route)
            # Another replica if there is one; else the same one again on a fresh connection (a
            # pooled connection to a backend that restarted on the same port fails this way).
            replica = self._pick(latest, tried) or self._pick(latest, set())
            if replica is None:
                break
            tried.add(replica.url)
            state = self._state(replica.url)
            state.enter()
            version = str(latest.version if replica in latest.replicas else route.version)
            try:
                session = self.session if attempt == 0 else self.fresh_session
                async with session.request(method, replica.url + path, data=body, headers=headers) as resp:
                    try:
                        payload = await resp.read()
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # started: never retried
                        self._failed(replica, exc)
                        return self._bad_gateway(route, version, f"response cut off: {type(exc).__name__}")
                    state.failures = 0
                    out = {"X-Model-Version": version}
                    if "Content-Type" in resp.headers:
                        out["Content-Type"] = resp.headers["Content-Type"]
                    return web.Response(status=resp.status, body=payload, headers=out)
            except asyncio.TimeoutError:
                # A replica that let a request hang for the whole timeout leaves the rotation at
                # once: the next request must not wait as long for the same answer.
                self._failed(replica, "timeout", eject=True)
                return error(504, f"{route.model}@{route.alias} did not answer within {self.settings.request_timeout:g} s",
                             headers={"X-Model-Version": version}, model=route.model, alias=route.alias, version=version)
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError) as exc:  # nothing came back: safe to try another replica
                self._failed(replica, exc)
                last_problem = f"{type(exc).__name__}: {exc}"
                continue
            except aiohttp.ClientError as exc:
                self._failed(replica, exc)
                return self._bad_gateway(route, version, f"{type(exc).__name__}: {exc}")
            finally:
                state.inflight -= 1
        log.warning("backend unreachable", extra={"model": route.model, "alias": route.alias,
                                                  "version": route.version, "error": last_problem})
        return self._bad_gateway(route, str(route.version), "deployment unreachable")

    def _failed(self, replica: Replica, problem: object, eject: bool = False) -> None:
        state = self._state(replica.url)
        state.failures += 1
        if state.ejected_at is None and (eject or state.failures >= self.settings.eject_after):
            state.ejected_at = time.time()
            self.metrics.ejections_total.inc()
            log.warning("replica ejected", extra={"url": replica.url, "failures": state.failures, "error": str(problem)})

    def _bad_gateway(self, route: RouteEntry, version: str, reason: str) -> web.Response:
        return error(502, f"deployment of {route.model}@{route.alias} is unreachable", headers={"X-Model-Version": version},
                     model=route.model, alias=route.alias, version=version, reason=reason)

    def _observe(self, model: str, alias: str, version: str, status: int, seconds: float) -> None:
        labels = (model, alias, version, str(status))
        counter = self._counters.get(labels)
        if counter is None:
            counter = self._counters[labels] = self.metrics.requests_total.labels(*labels)
        counter.inc()
        timer = self._timers.get(labels[:2])
        if timer is None:
            timer = self._timers[labels[:2]] = self.metrics.request_duration.labels(*labels[:2])
        timer.observe(seconds)

    # -- operations ----------------------------------------------------------------------
    async def endpoints(self, request: web.Request) -> web.Response:
        return web.json_response([self.endpoint_json(r) for r in self.table.table.routes])

    def endpoint_json(self, route: RouteEntry) -> dict:
        replicas = [{"url": r.url, "index": r.index, "inflight": self._state(r.url).inflight,
                     "state": "ejected" if self._state(r.url).ejected_at is not None else "ready"}
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
            "shadow": None if route.shadow is None else {
                "alias": route.shadow.alias, "version": route.shadow.version, "percent": route.shadow.percent,
                "compare": route.shadow.compare, "replicas": len(route.shadow.replicas)},
        }

    async def stats_page(self, request: web.Request) -> web.Response:
        """Answers of one (model, alias, version) since a unix time: a rollout gate's figures."""
        q = request.query
        try:
            since = float(q.get("since", "0"))
        except ValueError:
            return error(400, "since must be a unix time")
        if not all(q.get(k) for k in ("model", "alias", "version")):
            return error(400, "model, alias and version are required")
        return web.json_response(self.recent.since(q["model"], q["alias"], q["version"], since))

    async def inflight_page(self, request: web.Request) -> web.Response:
        """Requests in flight per backend URL: what the watcher waits on before stopping one."""
        return web.json_response({url: s.inflight for url, s in self.replicas.items()})

    async def load_page(self, request: web.Request) -> web.Response:
        """Per backend URL: requests in flight and requests sent so far (a counter): what the
        watcher's autoscaler samples."""
        return web.json_response({url: {"inflight": s.inflight, "requests": s.requests} for url, s in self.replicas.items()})

    async def health(self, request: web.Request) -> web.Response:
        table = self.table.table
        body = {"status": "ok", "table_serial": table.serial, "routes": len(table.routes),
                "table_age_s": round(time.time() - table.published_at, 1) if table.published_at else None,
                "table_error": self.table.error}
        return web.json_response(body)

    async def metrics_page(self, request: web.Request) -> web.Response:
        payload = generate_latest(self.metrics.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def listen(app: web.Application, host: str, port: int, what: str, option: str) -> web.AppRunner:
    """Start ``app`` on host:port; a taken port is a one-line error naming the option."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise ValidationError(f"{what} port {host}:{port} is already in use; pick another with {option}") from None
        raise MlopsError(f"cannot listen on {host}:{port}: {exc}") from None
    return runner


def run(settings: GatewaySettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    from mlops_toolkit.jsonlog import configure_json_logging

    configure_json_logging(service="gateway")
    asyncio.run(_serve(settings))


async def _serve(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    data = await listen(gateway.app(), settings.host, settings.port, "gateway", "--port")
    try:
        admin = await listen(gateway.admin_app(), settings.admin_host, settings.admin_port, "gateway admin", "--admin-port")
    except BaseException:
        await data.cleanup()
        raise
    log.info("gateway started", extra={
        "url": f"http://{settings.host}:{settings.port}", "admin": f"http://{settings.admin_host}:{settings.admin_port}",
        "routes_file": str(gateway.table.path), "table_serial": gateway.table.table.serial,
        "request_timeout_s": settings.request_timeout, "max_body_mb": settings.max_body_mb,
        "max_inflight": settings.max_inflight, "auth": settings.auth_token is not None,
    })
    try:
        await stop.wait()
    finally:
        await admin.cleanup()
        await data.cleanup()
        log.info("gateway stopped")
