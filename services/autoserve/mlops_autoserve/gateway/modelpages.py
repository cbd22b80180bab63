"""What a served route tells an application developer: ``/serve/{model}/{alias}/metadata``
(the version's signature, input example, flavors, requirements, data contract) and
``/serve/{model}/{alias}/openapi.json`` (:mod:`openapi`). Both from the metadata file the
watcher wrote (:class:`modelinfo.ModelInfo`), both behind the data port's bearer token."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from mlops_autoserve.gateway.admin import bearer_ok
from mlops_autoserve.gateway.responses import error
from mlops_autoserve.openapi import document_json
from mlops_autoserve.v2protocol import model_metadata

if TYPE_CHECKING:
    from mlops_autoserve.gateway.app import Gateway


def _schema(text: object) -> object:
    """A schema as MLmodel holds it (JSON text) as JSON itself."""
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


class ModelPages:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/serve/{model}/{alias}/metadata", self.metadata),
                web.get("/serve/{model}/{alias}/openapi.json", self.openapi)]

    def _route(self, request: web.Request):  # noqa: ANN202
        if not bearer_ok(request, self.gateway.settings.auth_token):
            return None, error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        model, alias = self.gateway.names(request)
        route = self.gateway.table.table.get(model, alias)
        if route is None:
            return None, error(404, f"no endpoint for {model}@{alias}", model=model, alias=alias)
        if route.version is None:
            return None, error(503, "endpoint not ready", model=model, alias=alias, state=route.state)
        return route, None

    async def metadata(self, request: web.Request) -> web.Response:
        route, problem = self._route(request)
        if problem is not None:
            return problem
        meta = self.gateway.model_info.get(route.model, route.version)
        headers = {"X-Model-Version": str(route.version)}
        if meta is None:
            return error(503, f"the metadata of version {route.version} is not published yet; retry",
                         headers={**headers, "Retry-After": "1"}, model=route.model, alias=route.alias)
        signature = meta.signature or {}
        return web.json_response({
            "model": route.model, "alias": route.alias, "version": route.version, "run_id": meta.run_id,
            "flavors": list(meta.flavors),
            "signature": {k: _schema(signature.get(k)) for k in ("inputs", "outputs", "params")},
            "input_example": meta.input_example, "requirements": list(meta.requirements),
            "data_contract": meta.data_contract, "v2": model_metadata(route.model, [route.alias], meta.parsed),
        }, headers=headers)

    async def openapi(self, request: web.Request) -> web.Response:
        route, problem = self._route(request)
        if problem is not None:
            return problem
        meta = self.gateway.model_info.get(route.model, route.version)
        return web.Response(body=document_json(route.model, route.alias, meta, route.version),
                            content_type="application/json", headers={"X-Model-Version": str(route.version)})
