"""Test harness: ONE real ``mlflow server`` per session, on loopback, with --workers 1.

The backend is a fresh database on the real PostgreSQL at 127.0.0.1:5432 when it answers,
SQLite otherwise. With CI=true an unreachable PostgreSQL fails the session: CI must test
what production runs. Nothing here mocks MLflow.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mlops_toolkit as mt
from mlops_toolkit.ops.local_server import LocalMlflowServer

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_DSN = os.environ.get("MLOPS_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
TEST_EXPERIMENT = "pytest"


def need(condition: bool, reason: str) -> None:
    """Skip a test whose real part is missing, except under CI where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a required part is missing: {reason}")
    pytest.skip(reason)


def _postgres_database() -> tuple[str | None, Callable[[], None]]:
    """Create a fresh database; return its SQLAlchemy URL and a function that drops it."""
    try:
        import psycopg

        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means "no Postgres here"
        if IN_CI:
            pytest.exit(f"CI=true but PostgreSQL is unreachable ({PG_DSN}): {exc}", returncode=3)
        return None, lambda: None
    name = f"mlops_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    user = admin.info.user
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}", drop


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflowServer]:
    root = tmp_path_factory.mktemp("mlflow")
    backend, drop = _postgres_database()
    backend = backend or f"sqlite:///{root / 'mlflow.db'}"
    from cryptography.fernet import Fernet

    server = LocalMlflowServer(
        backend_store_uri=backend,
        artifacts_dir=root / "artifacts",
        extra_env={  # registry webhooks to a loopback receiver: MLflow refuses http and private IPs by default
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        },
    )
    started = time.monotonic()
    server.start()
    print(f"\nmlflow server {server.uri} on {backend.split('@')[-1]} ready in {time.monotonic() - started:.1f} s")
    try:
        yield server
    finally:
        server.stop()
        drop()


@pytest.fixture(scope="module")
def app_db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh application database per test module: PostgreSQL when it answers (required
    under CI), else SQLite."""
    url, drop = _postgres_database()
    yield url or f"sqlite:///{tmp_path_factory.mktemp('appdb') / 'app.db'}"
    drop()


@pytest.fixture(scope="session")
def tracking_uri(mlflow_server: LocalMlflowServer) -> str:
    return mlflow_server.uri


@pytest.fixture(autouse=True)
def _toolkit_settings(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts configured for the session server with no default model."""
    for var in ("MLOPS_MODEL_NAME", "MLOPS_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    if "tracking_uri" in request.fixturenames:
        uri = request.getfixturevalue("tracking_uri")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mt.configure(tracking_uri=uri, experiment=TEST_EXPERIMENT)


@pytest.fixture
def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    return lambda prefix="model": f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_model(mlflow_client, unique_name) -> Callable[..., str]:
    """Register a model with N versions, each from a real run with the given metrics.

    Cheap (no model files): for alias and promotion logic, where only versions, runs and
    metrics matter. Tests of model logging use real ``log_model`` instead.
    """
    from mlflow.entities import Metric

    experiment = mlflow_client.get_experiment_by_name(TEST_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else mlflow_client.create_experiment(TEST_EXPERIMENT)

    def make(versions: int = 2, metrics: list[dict[str, float]] | None = None, name: str | None = None) -> str:
        name = name or unique_name("model")
        mlflow_client.create_registered_model(name)
        for i in range(versions):
            run = mlflow_client.create_run(experiment_id, run_name=f"{name}-{i + 1}")
            if metrics and i < len(metrics) and metrics[i]:
                now = int(time.time() * 1000)
                mlflow_client.log_batch(
                    run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics[i].items()]
                )
            mlflow_client.create_model_version(
                name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
            )
        return name

    return make


@pytest.fixture(scope="session")
def iris_data():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture
def mlops_script():
    """Run the installed ``mlops`` console script as a user would."""
    import subprocess
    import sys

    script = Path(sys.executable).parent / "mlops"
    assert script.exists(), f"console script missing at {script}: is the package installed?"

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
        )

    return run


@pytest.fixture
def pushgateway(tmp_path) -> Iterator[str]:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on a loopback port."""
    from mlops_toolkit.ops.processes import free_port
    from tests.daemons import Daemon, binary  # imported late: it imports this module

    port = free_port()
    # In memory only: Debian's default persistence file is shared by every instance, so a
    # new one would start with whatever earlier runs pushed.
    daemon = Daemon([binary("prometheus-pushgateway", "pushgateway"), f"--web.listen-address=127.0.0.1:{port}",
                     "--persistence.file="], port, tmp_path / "pushgateway.log", ready_path="/-/ready")
    yield daemon.url
    daemon.stop()


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
def s3_server(tmp_path) -> Iterator[str]:
    """moto's S3 server on loopback, standing in for the stack's MinIO (which cannot run
    here: not in Debian, PyPI or npm). The only fake in the suite."""
    from mlops_toolkit.ops.processes import free_port
    from tests.daemons import Daemon, binary

    port = free_port()
    daemon = Daemon([binary("moto_server", path=os.path.dirname(sys.executable)), "-H", "127.0.0.1", "-p", str(port)],
                    port, tmp_path / "moto.log", ready_path="/")
    yield daemon.url
    daemon.stop()

