"""Every DAG imports cleanly and runs end to end in-process against the real app-db
(PostgreSQL) and the real MLflow server of the test session."""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request

import pytest
from sqlalchemy import create_engine, select

import mlops_toolkit as mt
from mlops_toolkit.batch import appdb

pytestmark = pytest.mark.slow
DAG_IDS = {"dag_data_load", "dag_training", "dag_batch_inference", "dag_model_monitoring"}
DAY = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def model() -> str:
    """One registered model for the whole DAG sequence (load, train, score, monitor)."""
    import uuid

    return f"dag-iris-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def env(monkeypatch, app_db_url, tracking_uri, model):
    monkeypatch.setenv("APP_DB_URL", app_db_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLOPS_MODEL_NAME", model)
    mt.configure(tracking_uri=tracking_uri)
    engine = create_engine(app_db_url)
    appdb.migrate(engine)
    return engine


def _run(dagbag, dag_id: str, day: dt.datetime = DAY):
    """One run, for this test's model: the DAGs take it as a param (default from the environment
    when the file was parsed, as the scheduler would), a triggered run passes it in its conf."""
    dag = dagbag.get_dag(dag_id)
    return dag.test(logical_date=day, run_conf={"model": os.environ["MLOPS_MODEL_NAME"]})


def test_every_dag_file_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS
    # Unpausing creates a scheduled run beside a triggered one: writers never overlap.
    assert {d: dagbag.get_dag(d).max_active_runs for d in ("dag_data_load", "dag_training")} == {
        "dag_data_load": 1, "dag_training": 1}


def test_data_load_is_idempotent_per_date(dagbag, env):
    for day in (DAY - dt.timedelta(days=2), DAY - dt.timedelta(days=1), DAY, DAY):
        assert _run(dagbag, "dag_data_load", day).state == "success"
    assert appdb.count_rows(env, appdb.input_rows, batch_date=DAY.date()) == 30
    assert appdb.count_rows(env, appdb.input_rows) == 90


def test_batch_inference_waits_for_production_and_fails_clearly(dagbag, env, monkeypatch):
    import dags.dag_batch_inference as module

    monkeypatch.setattr(module, "WAIT_TIMEOUT", 1)
    from airflow.dag_processing.dagbag import DagBag

    fresh = DagBag(dag_folder=module.__file__)
    run = fresh.get_dag("dag_batch_inference")
    for task in run.tasks:
        if task.task_id == "wait_for_production":
            task.timeout = 1
            task.poke_interval = 0.2
            task.mode = "poke"
    dag_run = run.test(logical_date=DAY, run_conf={"model": os.environ["MLOPS_MODEL_NAME"]})
    assert dag_run.state == "failed"
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == {"wait_for_production": "failed", "score": "upstream_failed"}  # the wait timed out
    assert appdb.count_rows(env, appdb.predictions) == 0


def test_training_moves_production_only_through_the_gate(dagbag, env, model, mlflow_client):
    assert _run(dagbag, "dag_training").state == "success"
    production = mt.get_alias(model, "Production")
    challenger = mt.get_alias(model, "challenger")
    assert production.version != challenger.version
    assert mlflow_client.get_run(production.run_id).data.tags["mlops.gate.role"] == "champion"
    assert mt.alias_history(model, "Production")[-1].reason.startswith("promote_best:")
    # Same data again: the newcomers tie the champion, so Production stays where it is.
    assert _run(dagbag, "dag_training", DAY + dt.timedelta(days=7)).state == "success"
    assert mt.get_alias(model, "Production").version == production.version
    assert mt.get_alias(model, "challenger").version > challenger.version


def test_batch_inference_scores_and_a_rerun_never_duplicates(dagbag, env, model):
    assert _run(dagbag, "dag_batch_inference").state == "success"
    assert _run(dagbag, "dag_batch_inference").state == "success"
    assert appdb.count_rows(env, appdb.predictions, batch_date=DAY.date(), model_name=model) == 30
    with env.connect() as connection:
        versions = set(connection.execute(select(appdb.predictions.c.model_version)).scalars())
    assert versions == {mt.get_alias(model, "Production").version}


def test_monitoring_logs_drift_and_pushes_metrics(dagbag, env, model, pushgateway, monkeypatch, mlflow_client):
    """Batch inputs as loaded, and live requests (rows as the gateway's payload log writes
    them) whose petal length is shifted by 3 cm: drift on the live source only."""
    from mlops_toolkit.batch.jobs import reference_data

    monkeypatch.setenv("PUSHGATEWAY_URL", pushgateway)
    reference = reference_data(model)
    shifted = reference.assign(**{"petal length (cm)": reference["petal length (cm)"] + 3.0})
    logged_at = dt.datetime(2026, 11, 20, 12, tzinfo=dt.timezone.utc)
    appdb.insert_payloads(env, [
        {"logged_at": logged_at, "model_name": model, "alias": "Production", "model_version": 1, "status": 200,
         "latency_ms": 3.0, "response": '{"predictions": [0, 0]}',
         "request": json.dumps({"dataframe_split": {"columns": list(shifted.columns),
                                                    "data": shifted.iloc[i:i + 2].values.tolist()}})}
        for i in range(0, len(shifted) - 1, 2)])
    assert _run(dagbag, "dag_model_monitoring").state == "success"
    text = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert f'model_drift_detected{{instance="",job="model_monitoring",model="{model}",source="batch"}} 0' in text
    assert f'model_drift_detected{{instance="",job="model_monitoring",model="{model}",source="live"}} 1' in text
    assert f'batch_predictions_rows{{instance="",job="model_monitoring",model="{model}",source="batch"}} 30' in text
    experiment = mlflow_client.get_experiment_by_name("model-monitoring")
    runs = mlflow_client.search_runs([experiment.experiment_id], f"tags.`mlops.model` = '{model}'")
    assert {r.data.tags["mlops.drift_source"] for r in runs} == {"batch", "live"}
