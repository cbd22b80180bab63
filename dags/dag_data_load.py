"""Daily: load the day's batch of the demo data set into the app-db (idempotent per date)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=1)}


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     max_active_runs=1,  # a scheduled and a triggered run never write the same tables at once
     default_args=DEFAULTS, tags=["mlops", "batch"])
def dag_data_load():
    @task(execution_timeout=timedelta(minutes=10))
    def load(dag_run=None) -> int:
        from mlops_toolkit.batch.appdb import engine_from_env
        from mlops_toolkit.batch.jobs import load_batch

        return load_batch(engine_from_env(), (dag_run.logical_date or dag_run.run_after).date())

    load()


dag_data_load()
