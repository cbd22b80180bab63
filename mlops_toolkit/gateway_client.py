"""Calls to the autoserve gateway, shared by ``mlops demo`` and ``mlops bootstrap``.

Both need the same two things: is ``model@alias`` served yet (its ``/endpoints``
state), and one prediction with the version that answered. Plain urllib,
so a one-shot job needs nothing beyond the toolkit.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlops_toolkit.errors import MlopsError, one_line


@dataclass(frozen=True)
class Prediction:
    model: str
    alias: str
    version: int | None  # the gateway's X-Model-Version: which version really answered
    predictions: Any
    payload: dict


def get_json(url: str, timeout: float = 2.0) -> Any | None:
    """GET ``url`` as JSON, or None when it does not answer 200 with JSON (callers poll)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http only)
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def endpoints(gateway: str, timeout: float = 2.0) -> list[dict] | None:
    """The gateway's routes (``GET /endpoints``), or None while it does not answer."""
    data = get_json(f"{gateway.rstrip('/')}/endpoints", timeout)
    return data if isinstance(data, list) else None


def serve_url(gateway: str, model: str, alias: str, path: str = "invocations") -> str:
    """``/serve/{model}/{alias}/...``: model names may hold spaces and dots, so quote them."""
    quoted = f"{urllib.parse.quote(model, safe='')}/{urllib.parse.quote(alias, safe='')}"
    return f"{gateway.rstrip('/')}/serve/{quoted}/{path}"


def wait_until_served(
    gateway: str,
    model: str,
    aliases: Iterable[str],
    timeout: float,
    on_progress: Callable[[str], None],
    alive: Callable[[], None] | None = None,
    versions: Callable[[], Mapping[str, int | None]] | None = None,
    interval: float = 0.25,
) -> list[dict]:
    """Poll ``/endpoints`` until every alias of ``model`` is ``ready``; returns those endpoints.

    ``on_progress`` gets one line whenever the picture changes (not every poll). ``alive`` is
    called every poll and should raise when waiting is pointless (the watcher died).
    ``versions``, read every poll, pins the version each alias must serve (e.g. what the
    registry says now), so a route still on the previous version does not count as served.
    """
    aliases = list(aliases)
    deadline = time.monotonic() + timeout
    last_line = ""
    while True:
        if alive is not None:
            alive()
        wanted = dict(versions()) if versions is not None else {}
        states = {e.get("alias"): e for e in endpoints(gateway) or [] if e.get("model") == model}
        parts, done = [], True
        for alias in aliases:
            endpoint = states.get(alias)
            if endpoint is None:
                parts.append(f"{alias} waiting")
                done = False
                continue
            text = f"{alias} v{endpoint['desired_version']} {endpoint['state']}"
            if endpoint["state"] == "failed" and endpoint.get("last_error"):
                text += f" ({one_line(endpoint['last_error'], 200)})"
            ok = endpoint["state"] == "ready"
            if wanted.get(alias) is not None:
                ok = ok and endpoint.get("version") == wanted[alias]
                if endpoint.get("desired_version") != wanted[alias]:  # the watcher has not seen the move yet
                    text += f" (registry: v{wanted[alias]})"
            parts.append(text)
            done = done and ok
        line = ", ".join(parts)
        if line != last_line:
            on_progress(f"serving: {line}")
            last_line = line
        if done:
            return [states[a] for a in aliases]
        if time.monotonic() >= deadline:
            raise MlopsError(f"endpoints not ready after {timeout:.0f} s: {last_line}")
        time.sleep(interval)


def predict(gateway: str, model: str, alias: str, payload: dict, timeout: float = 30.0) -> Prediction:
    """POST ``payload`` to ``model@alias`` through the gateway; one readable error otherwise."""
    url = serve_url(gateway, model, alias)
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http only)
            body = json.loads(response.read())
            version = response.headers.get("X-Model-Version")
    except urllib.error.HTTPError as exc:
        detail = one_line(exc.read().decode(errors="replace") or exc.reason, 200)
        raise MlopsError(f"POST {url} answered HTTP {exc.code}: {detail}") from None
    except (OSError, ValueError) as exc:
        raise MlopsError(f"POST {url} failed: {one_line(exc)}") from None
    predictions = body.get("predictions", body) if isinstance(body, dict) else body
    return Prediction(model, alias, int(version) if version and version.isdigit() else None, predictions, payload)


def iris_payload(rows: int = 2) -> dict:
    """The sample the demo and the bootstrap send: the first iris training rows, ``dataframe_split``."""
    from mlops_toolkit.training import load_iris_split

    X_train, _, _, _ = load_iris_split()
    return {"dataframe_split": json.loads(X_train.head(rows).to_json(orient="split", index=False))}


__all__ = ["Prediction", "endpoints", "get_json", "iris_payload", "predict", "serve_url",
           "wait_until_served"]
