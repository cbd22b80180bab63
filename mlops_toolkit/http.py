"""One small HTTP client for the toolkit's own calls (health probes, the gateway, Airflow's
REST API), with one convention:

* :func:`request` returns a :class:`Response` for **any** HTTP answer, 2xx or not; the
  caller decides what a status means;
* no HTTP answer at all (refused, reset, timed out, bad host) raises :class:`Unreachable`,
  one readable line naming the URL.

Plain ``urllib``: a one-shot job or a probe needs nothing beyond the standard library.
Only ``http`` and ``https`` URLs are accepted (urllib would also open ``file:``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops_toolkit.errors import MlopsError, ValidationError


class Unreachable(MlopsError, ConnectionError):
    """Nothing answered over HTTP: refused, reset, timed out or an unknown host."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not JSON."""
        return json.loads(self.body)

    def text(self, limit: int | None = None) -> str:
        return self.body[:limit].decode(errors="replace")


def request(method: str, url: str, *, data: bytes | None = None, json_body: Any = None,
            headers: Mapping[str, str] | None = None, timeout: float = 5.0, max_bytes: int | None = None) -> Response:
    """Send one request; any HTTP status comes back as a Response, no answer raises Unreachable."""
    if not url.startswith(("http://", "https://")):
        raise ValidationError(f"not an http(s) URL: {url!r}")
    all_headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:  # noqa: S310 - http(s) checked above
            return Response(answer.status, answer.read(max_bytes) if max_bytes else answer.read(), dict(answer.headers))
    except urllib.error.HTTPError as exc:
        body = exc.read(max_bytes) if max_bytes else exc.read()
        return Response(exc.code, body, dict(exc.headers or {}))
    except (urllib.error.URLError, OSError) as exc:  # URLError wraps refused, DNS, TLS
        raise Unreachable(url, getattr(exc, "reason", None) or exc) from None


def get(url: str, timeout: float = 5.0, **kwargs: Any) -> Response:
    return request("GET", url, timeout=timeout, **kwargs)


def answers(url: str, timeout: float = 1.0) -> bool:
    """Does GET ``url`` answer 200 right now? (health checks and readiness polls)"""
    try:
        return get(url, timeout).status == 200
    except Unreachable:
        return False


def get_json(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> Any | None:
    """GET ``url`` as JSON, or None while it does not answer 200 with JSON (callers poll)."""
    try:
        response = get(url, timeout, headers=headers)
        return response.json() if response.status == 200 else None
    except (Unreachable, ValueError):
        return None


__all__ = ["Response", "Unreachable", "answers", "get", "get_json", "request"]
