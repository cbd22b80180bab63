"""Daily: wait until the model has a Production alias, then score the day's batch with it.
Re-running a date replaces that date's predictions (never duplicates)."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import PokeReturnValue, dag, task

DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=1)}
WAIT_TIMEOUT = float(os.environ.get("MLOPS_ALIAS_WAIT_TIMEOUT", 6 * 3600))
PARAMS = {"model": os.environ.get("MLOPS_MODEL_NAME", "iris")}  # a triggered run may pass another


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     default_args=DEFAULTS, params=PARAMS, tags=["mlops", "batch"])
def dag_batch_inference():
    @task.sensor(poke_interval=30, timeout=WAIT_TIMEOUT, mode="reschedule", retries=0)
    def wait_for_production(params=None) -> PokeReturnValue:
        """Poke the registry until MODEL@Production exists (train first: dag_training)."""
        from mlops_toolkit.batch.jobs import alias_version

        model = params["model"]
        version = alias_version(model, "Production")
        if version is None:
            print(f"{model} has no Production alias yet: run dag_training or `mlops alias set Production --model {model}`")
        return PokeReturnValue(is_done=version is not None, xcom_value=version)

    @task(execution_timeout=timedelta(minutes=30))
    def score(version: int, params=None, dag_run=None) -> dict:
        """Score with the version the sensor found, even if the alias moved since."""
        from mlops_toolkit.batch.appdb import engine_from_env
        from mlops_toolkit.batch.jobs import score_batch

        result = score_batch(engine_from_env(), (dag_run.logical_date or dag_run.run_after).date(), params["model"],
                             version=version)
        return {"rows": result.rows, "version": result.version}

    score(wait_for_production())


dag_batch_inference()
