"""Bring one model version up and prove it answers before any traffic is routed to it."""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.environments import EnvBuildError, Environments
from mlops_autoserve.watcher.runtime.base import (
    Deployment,
    DeploymentKey,
    Health,
    Runtime,
)
from mlops_toolkit import http
from mlops_toolkit.errors import one_line
from mlops_toolkit.waiting import WaitTimeout, wait_until

EXAMPLE_FILE = "serving_input_example.json"


class DeployError(Exception):
    """The new version could not be started, got no readiness, or failed its smoke test."""


class Deployer:
    def __init__(self, settings: AutoserveSettings, runtime: Runtime, stopping: threading.Event,
                 environments: Environments | None = None) -> None:
        self.settings = settings
        self.runtime = runtime
        self.stopping = stopping
        self.environments = environments

    def deploy(self, key: DeploymentKey, aliases: tuple[str, ...] = (), replica: int = 0) -> Deployment:
        """Build (or find) the version's environment, start a replica of ``key`` in it, wait for
        GET /ping 200, smoke-test /invocations; stop it on failure."""
        try:
            env = self.environments.prepare(key) if self.environments is not None else None
        except EnvBuildError as exc:
            raise DeployError(f"{key}: {exc}") from None
        except Exception as exc:
            raise DeployError(f"{key}: could not start: {one_line(exc)}") from None
        if self.stopping.is_set():
            raise DeployError(f"{key}: watcher is shutting down")
        try:
            deployment = self.runtime.start(key, aliases, replica, env)
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
        def ready() -> bool:
            if self.stopping.is_set():
                raise DeployError(f"{deployment.key}: watcher is shutting down")
            health = self.runtime.health(deployment)
            if health is Health.DEAD:
                raise DeployError(f"{deployment.key}: serve process exited before it was ready{self._last_words(deployment)}")
            return health is Health.READY

        try:
            wait_until(ready, self.settings.ready_timeout, interval=0.25)
        except WaitTimeout:
            raise DeployError(f"{deployment.key}: not ready after {self.settings.ready_timeout:.0f} s") from None

    def _last_words(self, deployment: Deployment) -> str:
        """Why it died: its log file, or what a runtime that keeps the logs itself says (Swarm)."""
        tail = _log_tail(deployment)
        if not tail and hasattr(self.runtime, "output"):
            tail = last_words(self.runtime.output(deployment))
        return tail

    def _smoke_test(self, deployment: Deployment) -> None:
        payload = input_example(self.settings.tracking_uri, deployment.key)
        if payload is None:
            return  # logged without an input example: /ping is all we can check
        for endpoint in self._current(deployment).serving():
            try:
                response = http.request("POST", f"{endpoint.url}/invocations", data=payload,
                                        headers={"Content-Type": "application/json"}, timeout=30)
            except http.Unreachable as exc:
                raise DeployError(f"{deployment.key}: smoke test failed: {exc.reason}") from None
            if not response.ok:
                raise DeployError(f"{deployment.key}: smoke test got HTTP {response.status}: {response.text(300)}")

    def _current(self, deployment: Deployment) -> Deployment:
        """As the runtime sees it now: copies a runtime keeps itself (Swarm tasks) were only
        known once they ran, after ``start`` returned."""
        if deployment.endpoints is None:
            return deployment
        return next((d for d in self.runtime.list() if d.ident == deployment.ident), deployment)


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


def _log_tail(deployment: Deployment) -> str:
    """The serve process's last words (processes: its log file)."""
    log = deployment.log_path
    if not log:
        return ""
    try:
        return last_words(Path(log).read_text(errors="replace").splitlines())
    except OSError:
        return ""


def last_words(output: list[str], lines: int = 2) -> str:
    """A dead server's last lines, led by the Python exception it died of (the line that says
    why: ``ModuleNotFoundError: No module named 'lightgbm'``), when there is one."""
    output = [line.strip() for line in output if line.strip()]
    exceptions = [line for line in output if _EXCEPTION_LINE.match(line)]
    picked = list(dict.fromkeys(exceptions[-1:] + output[-lines:]))
    return ": " + " | ".join(line[:200] for line in picked) if picked else ""


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)(\[\w+\])?: ")
