"""What a served route tells an application developer: ``/serve/{model}/{alias}/metadata``
(the version's signature, input example, flavors, requirements, data contract),
``/serve/{model}/{alias}/openapi.json`` (:mod:`openapi`), and Swagger UI pages over those
documents: ``/docs`` (every route in the table) and ``/serve/{model}/{alias}/docs``. All
from the metadata file the watcher wrote (:class:`modelinfo.ModelInfo`), all behind the
data port's bearer token when one is set. Swagger UI's files ship in the package
(``static/swagger-ui``, swagger-ui-dist 5 from npm): a page loads nothing from elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from mlops_autoserve.gateway.admin import bearer_ok
from mlops_autoserve.gateway.responses import error, unauthorized
from mlops_autoserve.openapi import document_json
from mlops_autoserve.v2protocol import model_metadata

if TYPE_CHECKING:
    from mlops_autoserve.gateway.app import Gateway

STATIC = Path(__file__).parent / "static" / "swagger-ui"
ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css"}
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{dom_id: "#swagger-ui", deepLinking: true, ...{config}}});
</script>
</body>
</html>
"""


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
                web.get("/serve/{model}/{alias}/openapi.json", self.openapi),
                web.get("/serve/{model}/{alias}/docs", self.route_docs),
                web.get("/docs", self.all_docs),
                web.get("/docs/static/{name}", self.asset)]

    def _route(self, request: web.Request):  # noqa: ANN202
        """A known route with a serving version, or the answer instead (401, 404, 503)."""
        route, problem = self.gateway.known_route(request)
        if route is not None and route.version is None:
            return None, error(503, "endpoint not ready", model=route.model, alias=route.alias, state=route.state)
        return route, problem

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

    # -- Swagger UI ------------------------------------------------------------------------
    async def all_docs(self, request: web.Request) -> web.Response:
        if not bearer_ok(request, self.gateway.settings.auth_token):
            return unauthorized()
        routes = [r for r in self.gateway.table.table.routes if r.version is not None]
        urls = [{"url": _openapi_url(r.model, r.alias), "name": f"{r.model}@{r.alias} (v{r.version})"}
                for r in sorted(routes, key=lambda r: (r.model, r.alias))]
        config = {"urls": urls} if urls else {"spec": {"openapi": "3.1.0", "info": {
            "title": "No model is served yet", "version": "-"}, "paths": {}}}
        return _page("Models served by this gateway", config)

    async def route_docs(self, request: web.Request) -> web.Response:
        route, problem = self._route(request)
        if problem is not None:
            return problem
        return _page(f"{route.model}@{route.alias}", {"url": _openapi_url(route.model, route.alias)})

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:  # a fixed list: no path from a caller reaches the file system
            return error(404, f"no such file: {name[:100]}")
        return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name],
                            headers={"Cache-Control": "public, max-age=86400"})


def _openapi_url(model: str, alias: str) -> str:
    return f"/serve/{quote(model, safe='')}/{quote(alias, safe='')}/openapi.json"


def _page(title: str, config: dict) -> web.Response:
    # JSON in a script element: "</" would end it, so it is written "<\/"
    text = json.dumps(config).replace("</", "<\\/")
    html = PAGE.format(title=_html(title), config=text)
    return web.Response(text=html, content_type="text/html")


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
