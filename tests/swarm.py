"""A real single-node Docker Swarm on 127.0.0.1 and an MLflow server its tasks can reach,
for the Swarm-runtime tests and benchmarks.

Swarm mode and live-restore exclude each other on one daemon (Docker refuses ``swarm
init`` with "--live-restore daemon configuration is incompatible with swarm mode"), and CI
runs the engine with live-restore for the daemon-restart test: :func:`swarm_mode` turns it
off (daemon.json + SIGHUP, which dockerd reloads), initialises the swarm on 127.0.0.1, and
on the way out leaves the swarm and puts daemon.json back as it found it.

Swarm tasks cannot reach a server on the host's loopback, so :class:`SwarmStack` runs the
MLflow server (SQLite backend, artifacts served through it) as a container of the serving
image on an attachable overlay network of its own, published on 127.0.0.1 for the test and
the watcher; the tasks join that network and reach it by name.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlops_toolkit.ops.processes import free_port
from tests.harness import Watcher, http_json, wait_for

DAEMON_JSON = Path("/etc/docker/daemon.json")


def _live_restore(client, enabled: bool) -> None:
    config = json.loads(DAEMON_JSON.read_text()) if DAEMON_JSON.exists() else {}
    config["live-restore"] = enabled  # written explicitly: a removed key stays on after a reload
    DAEMON_JSON.write_text(json.dumps(config))
    subprocess.run(["pkill", "-HUP", "-x", "dockerd"], check=True)
    wait_for(lambda: client.info()["LiveRestoreEnabled"] is enabled, 20, what=f"live-restore {enabled}")


@contextmanager
def swarm_mode(client) -> Iterator[None]:
    """The engine as a single-node swarm manager for the block; as it was afterwards."""
    info = client.info()
    if info["Swarm"]["LocalNodeState"] == "active":
        yield  # someone's swarm: used as it is, left as it is
        return
    saved = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else None
    if info["LiveRestoreEnabled"]:
        _live_restore(client, False)
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        yield
    finally:
        client.swarm.leave(force=True)
        if saved is None:
            DAEMON_JSON.unlink(missing_ok=True)
        else:
            DAEMON_JSON.write_text(saved)
        if info["LiveRestoreEnabled"]:
            subprocess.run(["pkill", "-HUP", "-x", "dockerd"], check=True)
            wait_for(lambda: client.info()["LiveRestoreEnabled"] is True, 20, what="live-restore back on")


class SwarmStack:
    """The overlay network, the MLflow server on it, and the watcher flags that use them."""

    def __init__(self, client, image: str) -> None:
        self.client, self.image = client, image
        self.name = f"mlops-swarm-{uuid.uuid4().hex[:6]}"
        self.network = client.networks.create(self.name, driver="overlay", attachable=True)
        self.port = free_port()
        self.mlflow = client.containers.run(
            image, ["mlflow", "server", "--backend-store-uri", "sqlite:////tmp/mlflow.db", "--serve-artifacts",
                    "--artifacts-destination", "/tmp/artifacts", "--host", "0.0.0.0", "--port", "5000",  # noqa: S104 - the container's own namespace
                    "--workers", "1"],
            name=f"{self.name}-mlflow", detach=True, network=self.name, ports={"5000/tcp": ("127.0.0.1", self.port)},
            environment={"MLFLOW_SERVER_ALLOWED_HOSTS": f"{self.name}-mlflow,{self.name}-mlflow:*,127.0.0.1,127.0.0.1:*"},
        )
        wait_for(self._answers, 90, what="MLflow server in the swarm network")

    @property
    def uri(self) -> str:
        """The MLflow server as the test, the watcher and the gateway reach it."""
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            return http_json("GET", f"{self.uri}/health")[0] == 200
        except OSError:
            return False

    def runtime_args(self, instance: str | None = None, image: str | None = None) -> list[str]:
        """``mlops autoserve`` flags for this swarm: tasks on the overlay, published on their node."""
        return ["--runtime", "swarm", "--docker-image", image or self.image, "--docker-network", self.name,
                "--docker-publish", "--container-tracking-uri", f"http://{self.name}-mlflow:5000",
                "--instance", instance or self.name, "--docker-memory", "1g"]

    def watcher(self, state: Path, models: list[str], *extra: str, instance: str | None = None,
                image: str | None = None, **options) -> Watcher:
        return Watcher(self.uri, state, models, *self.runtime_args(instance, image), *extra, **options)

    def services(self, **labels: str) -> list:
        filters = [f"mlops.autoserve.instance={self.name}", *(f"{k}={v}" for k, v in labels.items())]
        return self.client.services.list(filters={"label": filters})

    def running_tasks(self, service) -> list[dict]:
        return [t for t in self.client.api.tasks(filters={"service": service.id, "desired-state": "running"})
                if t["Status"]["State"] == "running"]

    def close(self) -> None:
        for service in self.client.services.list(filters={"label": "mlops.autoserve=true"}):
            if service.attrs["Spec"]["Labels"].get("mlops.autoserve.instance", "").startswith(self.name):
                service.remove()
        wait_for(lambda: not self.client.containers.list(filters={"label": "mlops.autoserve=true"}), 60,
                 what="tasks gone")
        self.mlflow.remove(force=True)
        self.network.remove()


@contextmanager
def swarm_stack(client, image: str) -> Iterator[SwarmStack]:
    with swarm_mode(client):
        stack = SwarmStack(client, image)
        try:
            yield stack
        finally:
            stack.close()
