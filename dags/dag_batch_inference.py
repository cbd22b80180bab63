"""Daily: wait until the model has a Production alias, then score the day's batch with it.
Re-running a date replaces that date's predictions (never duplicates)."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import PokeReturnValue, dag, task

DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=1)}
WAIT_TIMEOUT = float(os.environ.get("MLOPS_ALIAS_WAIT_TIMEOUT", 6 * 3600))


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     default_args=DEFAULTS, tags=["mlops", "batch"])
def dag_batch_inference():
    @task.sensor(poke_interval=30, timeout=WAIT_TIMEOUT, mode="reschedule", retries=0)
    def wait_for_production() -> PokeReturnValue:
        """Poke the registry until MODEL@Production exists (train first: dag_training)."""
        from mlops_toolkit.batch import alias_version

        model = os.environ.get("MLOPS_MODEL_NAME", "iris")
        version = alias_version(model, "Production")
        if version is None:
            print(f"{model} has no Production alias yet: run dag_training or `mlops alias set Production --model {model}`")
        return PokeReturnValue(is_done=version is not None, xcom_value=version)

    @task(execution_timeout=timedelta(minutes=30))
    def score(version: int, dag_run=None) -> dict:
        from mlops_toolkit.appdb import engine_from_env
        from mlops_toolkit.batch import score_batch

        model = os.environ.get("MLOPS_MODEL_NAME", "iris")
        result = score_batch(engine_from_env(), (dag_run.logical_date or dag_run.run_after).date(), model)
        return {"rows": result.rows, "version": result.version}

    score(wait_for_production())


dag_batch_inference()
