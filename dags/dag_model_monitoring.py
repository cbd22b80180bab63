"""Daily: recent inputs vs the Production model's training data (KS test per feature), for
the batch input table and for the requests callers sent the gateway (its payload log, when
`--payload-log-rate` is on); logged to MLflow and pushed to the Pushgateway when
PUSHGATEWAY_URL is set (label source="batch" or "live")."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

DEFAULTS = {"retries": 2, "retry_delay": timedelta(minutes=1)}
PARAMS = {"model": os.environ.get("MLOPS_MODEL_NAME", "iris")}  # a triggered run may pass another


@dag(schedule="@daily", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     default_args=DEFAULTS, params=PARAMS, tags=["mlops", "monitoring"])
def dag_model_monitoring():
    @task(execution_timeout=timedelta(minutes=15))
    def check_drift(params=None, dag_run=None) -> dict:
        from mlops_toolkit.batch.appdb import engine_from_env
        from mlops_toolkit.batch.jobs import monitor

        report = monitor(engine_from_env(), (dag_run.logical_date or dag_run.run_after).date(),
                         params["model"],
                         pushgateway=os.environ.get("PUSHGATEWAY_URL") or None)
        return {"drift_detected": report.drift_detected, "drifted_features": report.drifted_features}

    @task(execution_timeout=timedelta(minutes=15))
    def check_live_drift(params=None, dag_run=None) -> dict:
        from mlops_toolkit.batch.appdb import engine_from_env
        from mlops_toolkit.batch.jobs import monitor_live

        report = monitor_live(engine_from_env(), (dag_run.logical_date or dag_run.run_after).date(),
                              params["model"], pushgateway=os.environ.get("PUSHGATEWAY_URL") or None)
        if report is None:
            return {"checked": False}
        return {"checked": True, "drift_detected": report.drift_detected, "drifted_features": report.drifted_features}

    check_drift()
    check_live_drift()


dag_model_monitoring()
