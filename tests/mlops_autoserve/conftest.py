"""Fixtures for autoserve: one model with real, servable versions and one broken version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

import mlops_toolkit as mt


@dataclass
class ServedModel:
    name: str
    good: list[int]  # versions that serve
    broken: int  # a version whose artifacts do not exist


@pytest.fixture(scope="module")
def served_model(tracking_uri, iris_data) -> ServedModel:
    """Three real sklearn versions logged with the toolkit, plus one with no artifacts."""
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    mt.configure(tracking_uri=tracking_uri, experiment="autoserve-tests")
    X, y = iris_data
    name = f"iris serve.{uuid.uuid4().hex[:6]}"  # a space and a dot: names are not URL-safe
    good = []
    for c in (0.5, 1.0, 2.0):
        with mt.start_run(f"C={c}", params={"C": c}) as run:
            model = LogisticRegression(C=c, max_iter=300).fit(X, y)
            good.append(run.log_model(model, register_as=name, input_example=X[:3]))
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(client.get_experiment_by_name("autoserve-tests").experiment_id)
    broken = client.create_model_version(name, source=f"{run.info.artifact_uri}/missing-model", run_id=run.info.run_id)
    return ServedModel(name, good, int(broken.version))
