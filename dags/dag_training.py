"""Weekly (and on demand): retrain candidates, register them, move Production only through
the champion/challenger gate; the runner-up goes to challenger."""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

DEFAULTS = {"retries": 1, "retry_delay": timedelta(minutes=2)}
PARAMS = {"model": os.environ.get("MLOPS_MODEL_NAME", "iris")}  # a triggered run may pass another


@dag(schedule="@weekly", start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
     max_active_runs=1,  # one champion/challenger decision at a time
     default_args=DEFAULTS, params=PARAMS, tags=["mlops", "training"])
def dag_training():
    @task(execution_timeout=timedelta(minutes=30))
    def train_and_gate(params=None) -> dict:
        import mlops_toolkit as mt
        from mlops_toolkit.batch.appdb import engine_from_env
        from mlops_toolkit.batch.jobs import train_from_appdb

        mt.configure(experiment=os.environ.get("MLOPS_EXPERIMENT", "scheduled-training"))
        gate = train_from_appdb(engine_from_env(), params["model"])
        return {"decision": str(gate.decision), "promoted": gate.decision.promoted,
                "challenger": str(gate.challenger) if gate.challenger else None}

    train_and_gate()


dag_training()
