"""Bring one model version up and prove it answers before any traffic is routed to it."""

from __future__ import annotations

import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlops_autoserve.runtime.base import Deployment, DeploymentKey, Health, Runtime
from mlops_autoserve.settings import AutoserveSettings

EXAMPLE_FILE = "serving_input_example.json"


class DeployError(Exception):
    """The new version could not be started, got no readiness, or failed its smoke test."""


class Deployer:
    def __init__(self, settings: AutoserveSettings, runtime: Runtime, stopping: threading.Event) -> None:
        self.settings = settings
        self.runtime = runtime
        self.stopping = stopping

    def deploy(self, key: DeploymentKey, aliases: tuple[str, ...] = (), replica: int = 0) -> Deployment:
        """Start a replica of ``key``, wait for GET /ping 200, smoke-test /invocations; stop it on failure."""
        try:
            deployment = self.runtime.start(key, aliases, replica)
        except Exception as exc:
            raise DeployError(f"{key}: could not start: {exc}") from exc
        try:
            self._wait_ready(deployment)
            if self.settings.smoke_test:
                self._smoke_test(deployment)
        except BaseException:
            self.runtime.stop(deployment)
            raise
        return deployment

    def _wait_ready(self, deployment: Deployment) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise DeployError(f"{deployment.key}: watcher is shutting down")
            health = self.runtime.health(deployment)
            if health is Health.READY:
                return
            if health is Health.DEAD:
                raise DeployError(f"{deployment.key}: serve process exited before it was ready{_log_tail(deployment)}")
            time.sleep(0.25)
        raise DeployError(f"{deployment.key}: not ready after {self.settings.ready_timeout:.0f} s")

    def _smoke_test(self, deployment: Deployment) -> None:
        payload = input_example(self.settings.tracking_uri, deployment.key)
        if payload is None:
            return  # logged without an input example: /ping is all we can check
        request = urllib.request.Request(
            f"{deployment.url}/invocations", data=payload, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read(300).decode(errors="replace")
            raise DeployError(f"{deployment.key}: smoke test got HTTP {exc.code}: {body}") from None
        except OSError as exc:
            raise DeployError(f"{deployment.key}: smoke test failed: {exc}") from None


def input_example(tracking_uri: str, key: DeploymentKey) -> bytes | None:
    """The request body MLflow saved with the model, or None when there is none."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifacts(
                artifact_uri=f"models:/{key.model}/{key.version}/{EXAMPLE_FILE}",
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
        except (MlflowException, OSError):
            return None
        return Path(path).read_bytes()


def _log_tail(deployment: Deployment, lines: int = 3) -> str:
    log = deployment.details.get("log")
    if not log:
        return ""
    try:
        tail = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        return ""
    return ": " + " | ".join(line.strip()[:200] for line in tail) if tail else ""
