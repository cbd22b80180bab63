"""The project's images (built by tests/stack/conftest.py), run on the real engine.

Containers use host networking and loopback ports only. The serving image is exercised by tests/mlops_autoserve/watcher/runtime/test_docker.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from mlops_toolkit.ops.processes import free_port
from tests.conftest import PG_DSN
from tests.stack.conftest import build_images, docker

pytestmark = pytest.mark.slow


def test_image_tags_follow_content_and_are_never_overwritten(images):
    ids = {name: docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip() for name, tag in images.items()}
    again = build_images(*images, timeout=120)
    assert again == list(images.values())  # same content, same tags, nothing rebuilt
    assert {name: docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip() for name, tag in images.items()} == ids


def _answers(url: str, timeout: float) -> bool:
    """Wait until ``url`` answers HTTP at all (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.3)
    return False


def test_mlflow_image_stores_artifacts_in_s3_serves_metrics_and_answers_its_compose_name(images, s3_server, iris_data,
                                                                                         tracking_uri):
    """The compose stack's MLflow as compose runs it: S3 artifacts (boto3 in the image),
    --expose-prometheus (its exporter in the image), and the Host header other containers
    send (mlflow:5000) allowed."""
    import boto3
    from sklearn.linear_model import LogisticRegression

    import mlops_toolkit as mt

    credentials = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test"}
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="moto-test",
                      aws_secret_access_key="moto-test")
    s3.create_bucket(Bucket="mlflow")
    port = free_port()
    name = f"mlops-test-mlflow-{uuid.uuid4().hex[:6]}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_S3_ENDPOINT_URL": s3_server, **credentials,
           "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"}
    run = docker("run", "-d", "--rm", "--init", "--name", name, "--network", "host",
                 *[arg for k, v in env.items() for arg in ("-e", f"{k}={v}")],
                 images["mlflow"], "--backend-store-uri", "sqlite:////tmp/mlflow.db",
                 "--artifacts-destination", "s3://mlflow/", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1", "--expose-prometheus", "/tmp/metrics")
    assert run.returncode == 0, run.stderr
    try:
        base = f"http://127.0.0.1:{port}"
        assert _answers(base + "/health", 90), docker("logs", name).stderr[-2000:]
        mt.configure(tracking_uri=base, experiment="image-test")
        X, y = iris_data
        with mt.start_run("s3") as logged:
            version = logged.log_model(LogisticRegression(max_iter=300).fit(X, y), register_as="image-test",
                                       input_example=X[:2])
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert any(k.endswith("MLmodel") for k in keys), keys  # the artifacts went to S3 through the server
        import mlflow

        from mlops_toolkit.config import registry

        with registry():
            assert list(mlflow.pyfunc.load_model(f"models:/image-test/{version}").predict(X[:2])) == [0, 0]
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "# TYPE" in metrics
        search = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=5",
                                        headers={"Host": "mlflow:5000"})
        with urllib.request.urlopen(search, timeout=5) as response:
            assert response.status == 200 and "experiments" in json.loads(response.read())
    finally:
        docker("rm", "-f", name)
        mt.configure(tracking_uri=tracking_uri)  # back to the session server for the next tests


def test_airflow_image_loads_every_dag_and_its_init_job_migrates_postgres(images, tmp_path):
    dags = docker("run", "--rm", "--entrypoint", "python", images["airflow"], "-c",
                  "from airflow.dag_processing.dagbag import DagBag; b = DagBag('/opt/airflow/dags');"
                  "print(sorted(b.dag_ids)); print(b.import_errors)", timeout=180)
    assert dags.returncode == 0, dags.stderr[-2000:]
    assert dags.stdout.splitlines()[-2:] == [
        "['dag_batch_inference', 'dag_data_load', 'dag_model_monitoring', 'dag_training']", "{}"]

    psycopg = pytest.importorskip("psycopg")
    database = f"mlops_airflow_{uuid.uuid4().hex[:6]}"
    auth = tmp_path / "auth"
    auth.mkdir()
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        # as compose runs it: root first, which hands the volume to airflow (uid 50000) and drops to it
        init = docker("run", "--rm", "--network", "host", "--user", "0:0", "-v", f"{auth}:/opt/airflow/auth",
                      "-e", f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                      "-e", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=/opt/airflow/auth/passwords.json",
                      "-e", "AIRFLOW_ADMIN_USER=admin", "-e", "AIRFLOW_ADMIN_PASSWORD=test-password",
                      "--entrypoint", "bash", images["airflow"], "/opt/airflow/init.sh", timeout=300)
        assert init.returncode == 0, init.stdout[-2000:] + init.stderr[-2000:]
        assert json.loads((auth / "passwords.json").read_text()) == {"admin": "test-password"}
        assert (auth / "passwords.json").stat().st_uid == 50000 and auth.stat().st_uid == 50000
        with psycopg.connect(PG_DSN.replace("dbname=postgres", f"dbname={database}")) as db:
            tables = db.execute("SELECT count(*) FROM information_schema.tables WHERE table_name IN "
                                "('dag', 'dag_run', 'task_instance', 'alembic_version')").fetchone()[0]
        assert tables == 4
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_autoserve_image_runs_the_watcher_and_the_bootstrap_job(images):
    watcher = docker("run", "--rm", images["autoserve"], "--help")
    assert watcher.returncode == 0 and "--targets-file" in watcher.stdout and "--runtime" in watcher.stdout
    version = docker("run", "--rm", "--entrypoint", "mlops", images["autoserve"], "--version")
    assert version.returncode == 0 and version.stdout.startswith("mlops, version")
