"""Calls to the autoserve gateway, shared by ``mlops demo`` and ``mlops bootstrap``.

Both need the same two things: is ``model@alias`` served yet (its ``/endpoints``
state, from the admin port), and one prediction with the version that answered.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mlops_toolkit import http
from mlops_toolkit.errors import MlopsError, one_line
from mlops_toolkit.waiting import WaitTimeout, wait_until


@dataclass(frozen=True)
class Prediction:
    model: str
    alias: str
    version: int | None  # the gateway's X-Model-Version: which version really answered
    predictions: Any
    payload: dict


def endpoints(gateway_admin: str, timeout: float = 2.0) -> list[dict] | None:
    """The gateway's routes (``GET /endpoints`` on its admin port), or None while it does not answer."""
    data = http.get_json(f"{gateway_admin.rstrip('/')}/endpoints", timeout)
    return data if isinstance(data, list) else None


def shadow_figures(gateway_admin: str, model: str, timeout: float = 2.0) -> dict[str, float]:
    """The gateway's shadow counters for ``model`` (admin ``/metrics``), summed over aliases:
    ``ok`` copies answered, ``compared`` values, ``agreement`` equal values."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = http.get(f"{gateway_admin.rstrip('/')}/metrics", timeout).text()
    except http.Unreachable:
        return {}
    wanted = {"autoserve_shadow_requests": "ok", "autoserve_shadow_compared": "compared",
              "autoserve_shadow_agreement": "agreement"}
    figures = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        key = wanted.get(family.name)
        for sample in family.samples if key else ():
            if sample.name.endswith("_total") and sample.labels.get("model") == model and \
                    sample.labels.get("result", "ok") == "ok":
                figures[key] += sample.value
    return figures


def serve_url(gateway: str, model: str, alias: str, path: str = "invocations") -> str:
    """``/serve/{model}/{alias}/...``: model names may hold spaces and dots, so quote them."""
    quoted = f"{urllib.parse.quote(model, safe='')}/{urllib.parse.quote(alias, safe='')}"
    return f"{gateway.rstrip('/')}/serve/{quoted}/{path}"


def wait_until_served(
    gateway_admin: str,
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
    last = {"line": ""}

    def served() -> list[dict] | None:
        if alive is not None:
            alive()
        wanted = dict(versions()) if versions is not None else {}
        states = {e.get("alias"): e for e in endpoints(gateway_admin) or [] if e.get("model") == model}
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
        if line != last["line"]:
            on_progress(f"serving: {line}")
            last["line"] = line
        return [states[a] for a in aliases] if done else None

    try:
        return wait_until(served, timeout, interval)
    except WaitTimeout:
        raise MlopsError(f"endpoints not ready after {timeout:.0f} s: {last['line']}") from None


def predict(gateway: str, model: str, alias: str, payload: dict, timeout: float = 30.0) -> Prediction:
    """POST ``payload`` to ``model@alias`` through the gateway; one readable error otherwise."""
    url = serve_url(gateway, model, alias)
    try:
        response = http.request("POST", url, json_body=payload, timeout=timeout)
    except http.Unreachable as exc:
        raise MlopsError(f"POST {url} failed: {one_line(exc.reason)}") from None
    if response.status != 200:
        raise MlopsError(f"POST {url} answered HTTP {response.status}: {one_line(response.text(2000), 200)}")
    try:
        body = response.json()
    except ValueError:
        raise MlopsError(f"POST {url} answered 200 with a body that is not JSON") from None
    version = response.headers.get("X-Model-Version")
    predictions = body.get("predictions", body) if isinstance(body, dict) else body
    return Prediction(model, alias, int(version) if version and version.isdigit() else None, predictions, payload)


def iris_payload(rows: int = 2) -> dict:
    """The sample the demo and the bootstrap send: the first iris training rows, ``dataframe_split``."""
    from mlops_toolkit.batch.training import load_iris_split

    X_train, _, _, _ = load_iris_split()
    return {"dataframe_split": json.loads(X_train.head(rows).to_json(orient="split", index=False))}


__all__ = ["Prediction", "endpoints", "iris_payload", "predict", "serve_url", "shadow_figures",
           "wait_until_served"]
