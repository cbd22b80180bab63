"""The Open Inference Protocol's REST routes (KServe V2) on the gateway's data port.

``{v}`` in ``/v2/models/{model}/versions/{v}`` is an alias; without it a call goes to
``--v2-default-alias`` (``Production``). The answering version number is ``model_version``
in the answer and ``X-Model-Version``. Metadata comes from the version's MLflow signature
(the watcher's metadata file, :class:`modelinfo.ModelInfo`), never from the registry.

An ``infer`` goes through the very path of ``/serve/{model}/{alias}/invocations``: the same
checks and limits, canary split, shadows, payload log and metrics; only the body is
translated (:mod:`v2protocol`) before the backend and after it. Every other route needs the
bearer token too (``--auth-token-file``), but ``/v2/health/live`` and ``/v2/health/ready``,
which a load balancer asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from mlops_autoserve.gateway.admin import bearer_ok
from mlops_autoserve.gateway.modelinfo import ModelInfo
from mlops_autoserve.gateway.responses import error, unauthorized
from mlops_autoserve.modelmeta import Signature
from mlops_autoserve.routetable import RouteEntry
from mlops_autoserve.v2protocol import (
    BINARY_HEADER,
    InferRequest,
    V2Error,
    backend_error,
    infer_answer,
    infer_request,
    model_metadata,
)
from mlops_toolkit import __version__

if TYPE_CHECKING:
    from mlops_autoserve.gateway.app import Gateway

SERVER_NAME = "mlops-toolkit"


class V2Call:
    """One infer call's translation (:class:`app.Translation`)."""

    __slots__ = ("call", "header_length", "info", "model", "signature")

    def __init__(self, info: ModelInfo, model: str, header_length: int | None = None) -> None:
        self.info, self.model, self.header_length = info, model, header_length
        self.call: InferRequest | None = None
        self.signature = Signature()

    def request(self, body: bytes | None, version: int | None) -> bytes:
        self.signature = self.info.signature(self.model, version) if version is not None else Signature()
        self.call = infer_request(body or b"", self.signature, self.header_length)
        return self.call.body

    def answer(self, response: web.Response) -> web.Response:
        version = response.headers.get("X-Model-Version", "")
        headers = {"X-Model-Version": version} if version else None
        if response.status != 200 or self.call is None:
            return error(response.status, backend_error(response.body or b""), headers=headers)
        try:
            out = infer_answer(response.body, self.model, version, self.call, self.signature)
        except V2Error as exc:
            return error(exc.status, str(exc), headers=headers)
        return web.json_response(out, headers=headers)


class V2Routes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[web.RouteDef]:
        g = self.gateway
        model, version = "/v2/models/{model}", "/v2/models/{model}/versions/{alias}"
        return [
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            *(web.get(base, self.model_metadata) for base in (model, version)),
            *(web.get(base + "/ready", self.model_ready) for base in (model, version)),
            *(web.post(base + "/infer", self.infer, expect_handler=g._expect) for base in (model, version)),
        ]

    def _refused(self, request: web.Request) -> web.Response | None:
        if not bearer_ok(request, self.gateway.settings.auth_token):
            return unauthorized()
        return None

    async def server_metadata(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(
            {"name": SERVER_NAME, "version": __version__, "extensions": []})

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """Ready once the table has a route that can answer (400 otherwise, as the spec's booleans)."""
        ready = any(_ready(r) for r in self.gateway.table.table.routes)
        return web.json_response({"ready": ready}, status=200 if ready else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        route, problem = self.gateway.known_route(request)
        if problem is not None:
            return problem
        model = route.model
        aliases = sorted(r.alias for r in self.gateway.table.table.routes if r.model == model)
        signature = self.gateway.model_info.signature(model, route.version) if route.version else Signature()
        return web.json_response(model_metadata(model, aliases, signature),
                                 headers={"X-Model-Version": str(route.version or "")})

    async def model_ready(self, request: web.Request) -> web.Response:
        route, problem = self.gateway.known_route(request)
        if problem is not None:
            return problem
        ready = _ready(route)
        return web.json_response({"name": route.model, "ready": ready}, status=200 if ready else 400)

    async def infer(self, request: web.Request) -> web.StreamResponse:
        header_length = request.headers.get(BINARY_HEADER)
        if header_length is not None and not header_length.isdigit():
            response = error(400, f"{BINARY_HEADER} must be a number of bytes")
            response.force_close()  # the body is not read
            return response
        model, _ = self.gateway.names(request)
        call = V2Call(self.gateway.model_info, model, int(header_length) if header_length else None)
        return await self.gateway._proxy(request, "POST", "/invocations", call)


def _ready(route: RouteEntry) -> bool:
    return route.version is not None and bool(route.replicas)
