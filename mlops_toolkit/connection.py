"""One place that turns a tracking URI into a client that fails fast and speaks clearly.

MLflow's client retries a dead server for minutes by default (7 retries, backoff factor 2,
120 s timeout). A data scientist who mistyped a URI should know within seconds, so the
toolkit (a) probes ``/health`` once per URI with a short timeout and (b) bounds MLflow's
own retries unless the user set them. MLflow exceptions are translated to
:mod:`mlops_toolkit.errors` at this boundary.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlops_toolkit import http
from mlops_toolkit.errors import (
    MlopsError,
    NotFoundError,
    TrackingUnavailableError,
    ValidationError,
    one_line,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROBE_TIMEOUT_S = 3.0

# Bounded retries: about 3 s of back-off in all, instead of minutes. setdefault() keeps
# whatever the user configured explicitly.
_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

_probed: set[str] = set()
_probe_lock = threading.Lock()


def bound_mlflow_retries() -> None:
    """Make MLflow give up on an unreachable server in seconds, not minutes."""
    for key, value in _RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def probe_tracking_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingUnavailableError unless ``uri`` answers like an MLflow server.

    Only http(s) URIs are probed; file and database URIs are local and fail clearly anyway.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = http.get(uri.rstrip("/") + "/health", timeout, max_bytes=64)
    except http.Unreachable as exc:
        raise TrackingUnavailableError(f"cannot reach the MLflow tracking server at {uri}: {exc.reason}") from None
    if response.status != 200:
        raise TrackingUnavailableError(
            f"{uri} answered /health with HTTP {response.status}: is it an MLflow tracking server?", answered=True
        )
    if not response.body.strip().upper().startswith(b"OK"):
        raise TrackingUnavailableError(
            f"{uri} answered /health with {response.body[:40]!r}: is it an MLflow tracking server?", answered=True
        )


def ensure_reachable(uri: str) -> None:
    """Probe ``uri`` once per process; later calls are free."""
    with _probe_lock:
        if uri in _probed:
            return
    probe_tracking_server(uri)
    with _probe_lock:
        _probed.add(uri)


def forget_probe(uri: str | None = None) -> None:
    """Probe again next time (after a server restart, or in tests)."""
    with _probe_lock:
        if uri is None:
            _probed.clear()
        else:
            _probed.discard(uri)


def make_client(uri: str) -> MlflowClient:
    """An MlflowClient for ``uri`` that has been checked to answer."""
    from mlflow import MlflowClient

    bound_mlflow_retries()
    ensure_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def translated_errors(uri: str) -> Iterator[None]:
    """Turn MLflow and network exceptions into toolkit errors with one readable line."""
    from mlflow.exceptions import MlflowException, RestException

    try:
        yield
    except MlopsError:
        raise
    except (RestException, MlflowException) as exc:
        code = getattr(exc, "error_code", "")
        message = one_line(getattr(exc, "message", None) or str(exc)) or "unknown MLflow error"
        if code and message.startswith(f"{code}: "):
            message = message[len(code) + 2 :]
        if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"):
            raise NotFoundError(message) from None
        if code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"):
            raise ValidationError(message) from None
        if "API request to" in message or "Max retries exceeded" in message:
            forget_probe(uri)
            raise TrackingUnavailableError(
                f"lost the MLflow tracking server at {uri}: {message}"
            ) from None
        raise MlopsError(message) from None
    except OSError as exc:
        forget_probe(uri)
        raise TrackingUnavailableError(f"lost the MLflow tracking server at {uri}: {exc}") from None
