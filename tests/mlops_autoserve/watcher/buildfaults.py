"""Environment builds that fail or hang, for real: a loopback package index that never answers,
and model versions whose only artifact is the requirements file the watcher builds from."""

from __future__ import annotations

import socket
import threading

REQUIREMENTS_FILE = "requirements.txt"


class StuckIndex:
    """A package index on 127.0.0.1 that accepts every connection and never answers, so uv
    waits on it (give uv a long ``UV_HTTP_TIMEOUT``). ``close()`` drops every connection and
    the port: uv's requests then fail at once (connection refused)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="stuck-index", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/simple"

    @property
    def connections(self) -> int:
        """Connections accepted so far: a build is waiting on the index once this is above 0."""
        with self._lock:
            return len(self._connections)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed:
                    connection.close()
                    return
                self._connections.append(connection)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for connection in self._connections:
                connection.close()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)

    def __enter__(self) -> StuckIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_requirements(client, name: str, lines: list[str], versions: int = 1) -> list[int]:
    """Register ``versions`` versions of ``name`` whose model directory holds only
    ``requirements.txt`` with ``lines``: enough for the watcher to build its environment (a
    build that fails never gets as far as loading a model)."""
    experiment = client.get_experiment_by_name("autoserve-builds")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("autoserve-builds")
    client.create_registered_model(name)
    created = []
    for _ in range(versions):
        run = client.create_run(experiment_id)
        client.log_text(run.info.run_id, "\n".join(lines) + "\n", f"model/{REQUIREMENTS_FILE}")
        version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        created.append(int(version.version))
    return created
