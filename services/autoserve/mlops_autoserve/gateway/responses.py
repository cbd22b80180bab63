"""The gateway's own answers: JSON bodies with an ``error`` field, whatever went wrong."""

from __future__ import annotations

from aiohttp import web

from mlops_autoserve.routetable import RouteEntry


def error(status: int, message: str, headers: dict | None = None, **fields: object) -> web.Response:
    return web.json_response({"error": message, **fields}, status=status, headers=headers)


def bad_gateway(route: RouteEntry, version: str, reason: str) -> web.Response:
    return error(502, f"deployment of {route.model}@{route.alias} is unreachable", headers={"X-Model-Version": version},
                 model=route.model, alias=route.alias, version=version, reason=reason)


def unauthorized() -> web.Response:
    """401 for a data-port request without the bearer token of ``--auth-token-file``."""
    return error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
