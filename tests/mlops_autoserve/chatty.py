"""A real deployment to point things at: the chatty pyfunc (``chatty_model.py``) logged once
per test session and served by the process runtime (``mlflow models serve``)."""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey, Health
from mlops_autoserve.watcher.runtime.process import ProcessRuntime

from mlops_toolkit.ops.processes import free_port
from tests.harness import wait_for

READY_TIMEOUT = 90


def payload(*sizes: int) -> dict:
    """A request whose rows make the model print that many bytes each."""
    return {"dataframe_split": {"columns": ["bytes"], "data": [[n] for n in sizes]}}


@functools.cache
def logged(tracking_uri: str) -> DeploymentKey:
    """The chatty model, registered once per session (explicit requirements: no inference)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("autoserve-tests")
    name = f"chatty-{uuid.uuid4().hex[:6]}"
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("chatty_model.py")),
                                       registered_model_name=name, pip_requirements=[f"mlflow=={mlflow.__version__}"])
    return DeploymentKey(name, int(info.registered_model_version))


def runtime(tracking_uri: str, state_dir: Path) -> ProcessRuntime:
    port = free_port()
    return ProcessRuntime(AutoserveSettings(tracking_uri=tracking_uri, state_dir=state_dir, port_range=(port, port)))


def wait_ready(runtime: ProcessRuntime, deployment: Deployment) -> Deployment:
    def ready() -> bool:
        health = runtime.health(deployment)
        assert health is not Health.DEAD, f"serve process died: {Path(deployment.log_path).read_text()[-2000:]}"
        return health is Health.READY

    wait_for(ready, READY_TIMEOUT, interval=0.25, what=f"{deployment.key} ready ({deployment.log_path})")
    return deployment


@contextlib.contextmanager
def serving(runtime: ProcessRuntime, key: DeploymentKey) -> Iterator[Deployment]:
    deployment = runtime.start(key)
    try:
        yield wait_ready(runtime, deployment)
    finally:
        runtime.stop(deployment)
