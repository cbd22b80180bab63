"""Batch jobs against the real app-db (PostgreSQL) and the real MLflow server."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import create_engine, select

import mlops_toolkit as mt
from mlops_toolkit.batch import appdb, jobs

DAY = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def engine(app_db_url):
    engine = create_engine(app_db_url)
    yield engine
    engine.dispose()


def test_migrate_is_idempotent_and_versioned(engine):
    assert appdb.migrate(engine) == len(appdb.MIGRATIONS)
    assert appdb.migrate(engine) == len(appdb.MIGRATIONS)
    with engine.connect() as connection:
        versions = connection.execute(select(appdb.schema_table.c.version)).scalars().all()
    assert versions == list(range(1, len(appdb.MIGRATIONS) + 1))


def test_concurrent_first_migrations_do_not_collide():
    """Airflow starts a scheduled and a triggered run together on a fresh app-db: both
    migrate at once. On PostgreSQL that used to fail (pg_type unique violation)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import _postgres_database

    url, drop = _postgres_database()
    if url is None:
        pytest.skip("needs PostgreSQL (SQLite serialises writers itself)")
    fresh = create_engine(url, pool_size=4)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: appdb.migrate(fresh), range(4)))
        assert results == [len(appdb.MIGRATIONS)] * 4
        with fresh.connect() as connection:
            versions = connection.execute(select(appdb.schema_table.c.version)).scalars().all()
        assert versions == list(range(1, len(appdb.MIGRATIONS) + 1))
    finally:
        fresh.dispose()
        drop()


def test_load_batch_is_idempotent_per_date(engine):
    assert jobs.load_batch(engine, DAY) == jobs.ROWS_PER_BATCH
    assert jobs.load_batch(engine, DAY) == jobs.ROWS_PER_BATCH
    assert appdb.count_rows(engine, appdb.input_rows, batch_date=DAY) == jobs.ROWS_PER_BATCH
    frame = jobs.read_batch(engine, DAY)
    assert list(frame.columns[:4]) == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    assert set(frame["label"]) <= {0, 1, 2}


def test_missing_app_db_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("APP_DB_URL", raising=False)
    with pytest.raises(mt.ValidationError, match="set APP_DB_URL"):
        appdb.engine_from_env()


@pytest.mark.slow
def test_train_score_and_monitor_round_trip(engine, tracking_uri, unique_name, mlflow_client, pushgateway):
    model = unique_name("batch")
    assert jobs.alias_version(model, "Production") is None
    for offset in range(3):
        jobs.load_batch(engine, DAY - dt.timedelta(days=offset))
    gate = jobs.train_from_appdb(engine, model, min_rows=60)
    assert gate.decision.promoted and jobs.alias_version(model, "Production") == gate.decision.candidate_version
    assert gate.challenger is not None and gate.challenger.to_version != gate.decision.candidate_version
    champion_run = mlflow_client.get_model_version(model, str(gate.decision.candidate_version)).run_id
    tags = mlflow_client.get_run(champion_run).data.tags
    assert tags["mlops.gate.role"] == "champion" and "promoted" in tags["mlops.gate.decision"]
    assert "app-db, 63 rows" == tags["mlops.training_data"]
    assert mt.alias_history(model, "Production")[-1].reason.startswith("promote_best:")

    first = jobs.score_batch(engine, DAY, model)
    again = jobs.score_batch(engine, DAY, model)  # a re-run of the same date replaces, never duplicates
    assert first.rows == again.rows == jobs.ROWS_PER_BATCH and first.version == gate.decision.candidate_version
    assert appdb.count_rows(engine, appdb.predictions, batch_date=DAY, model_name=model) == jobs.ROWS_PER_BATCH
    with engine.connect() as connection:
        row = connection.execute(select(appdb.predictions).where(appdb.predictions.c.model_name == model)).first()
    assert (row.alias, row.model_version, row.run_id) == ("Production", first.version, champion_run)
    # The DAG scores the version its sensor found, even if the alias moved since.
    other = next(v for v in (1, 2, 3) if v != first.version)
    pinned = jobs.score_batch(engine, DAY, model, version=other)
    assert pinned.version == other and pinned.run_id == mlflow_client.get_model_version(model, str(other)).run_id
    with engine.connect() as connection:
        stored = {r.model_version for r in connection.execute(
            select(appdb.predictions).where(appdb.predictions.c.model_name == model))}
    assert stored == {other}

    report = jobs.monitor(engine, DAY, model, window_days=3, pushgateway=pushgateway)
    assert report.current_rows == 3 * jobs.ROWS_PER_BATCH and report.reference_rows == 63
    monitoring = mlflow_client.get_experiment_by_name("model-monitoring")
    runs = mlflow_client.search_runs([monitoring.experiment_id], f"tags.`mlops.model` = '{model}'")
    assert runs and runs[0].data.tags["mlops.current_hash"] == report.current_hash


def test_scoring_an_empty_day_is_a_clear_error(engine, make_model):
    model = make_model(versions=1)
    mt.set_alias(model, "Production", 1)
    with pytest.raises(mt.ValidationError, match="no input rows for 1999-01-01: run dag_data_load"):
        jobs.score_batch(engine, dt.date(1999, 1, 1), model)


def test_prod_scores_only_an_approved_unblocked_version(engine, make_model, monkeypatch):
    """The governance check comes before the model is loaded: nothing is written for a
    version prod may not use (the versions here have no model files at all)."""
    from mlops_toolkit import approvals
    from mlops_toolkit.governance import PolicyRefusal

    jobs.load_batch(engine, DAY)
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    approvals.block(model, 2, "labels leaked")
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "prod")
    with pytest.raises(PolicyRefusal, match=f"refused: {model} v1 is not approved for prod"):
        jobs.score_batch(engine, DAY, model)
    with pytest.raises(PolicyRefusal, match=f"refused: {model} v2 is blocked in prod"):
        jobs.score_batch(engine, DAY, model, version=2)
    assert appdb.count_rows(engine, appdb.predictions, model_name=model) == 0
