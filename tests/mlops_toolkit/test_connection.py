"""A wrong or dead tracking URI fails fast, with the URI in the message."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import mlops_toolkit as mt
from mlops_toolkit.connection import forget_probe
from mlops_toolkit.ops.processes import free_port


@pytest.fixture
def not_mlflow():
    """A loopback HTTP server that is not MLflow (404 everywhere)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_closed_port_fails_within_seconds():
    uri = f"http://127.0.0.1:{free_port()}"
    mt.configure(tracking_uri=uri)
    started = time.monotonic()
    with pytest.raises(mt.TrackingUnavailableError, match=f"cannot reach the MLflow tracking server at {uri}"):
        mt.list_models()
    assert time.monotonic() - started < 10


def test_server_that_is_not_mlflow(not_mlflow):
    mt.configure(tracking_uri=not_mlflow)
    with pytest.raises(mt.TrackingUnavailableError, match=f"{not_mlflow} answered /health with HTTP 404"):
        mt.list_aliases()


def test_probe_is_repeated_after_a_failure(tracking_uri):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mt.configure(tracking_uri=uri)
    with pytest.raises(mt.TrackingUnavailableError):
        mt.list_models()
    forget_probe()
    mt.configure(tracking_uri=tracking_uri)
    assert isinstance(mt.list_models(), list)
