"""Daily: recent inputs vs the Production model's training data (KS test per feature);
logged to MLflow and pushed to the Pushgateway when PUSHGATEWAY_URL is set."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=1)}


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     default_args=DEFAULTS, tags=["mlops", "monitoring"])
def dag_model_monitoring():
    @task(execution_timeout=timedelta(minutes=15))
    def check_drift(dag_run=None) -> dict:
        from mlops_toolkit.appdb import engine_from_env
        from mlops_toolkit.batch import monitor

        report = monitor(engine_from_env(), (dag_run.logical_date or dag_run.run_after).date(),
                         os.environ.get("MLOPS_MODEL_NAME", "iris"),
                         pushgateway=os.environ.get("PUSHGATEWAY_URL") or None)
        return {"drift_detected": report.drift_detected, "drifted_features": report.drifted_features}

    check_drift()


dag_model_monitoring()
