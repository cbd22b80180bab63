"""Runs, batched logging and model registration against the real server."""

from __future__ import annotations

import json
import urllib.parse

import pytest

import mlops_toolkit as mt
from tests.harness import CountingProxy

LOG_BATCH = "POST /api/2.0/mlflow/runs/log-batch"


@pytest.fixture
def counted(tracking_uri):
    """Route the toolkit through a counting proxy to see requests on the wire."""
    parsed = urllib.parse.urlparse(tracking_uri)
    with CountingProxy(parsed.hostname, parsed.port) as proxy:
        mt.configure(tracking_uri=proxy.uri, experiment="pytest")
        yield proxy


def test_metrics_go_in_one_request(counted, mlflow_client):
    metrics = {f"m{i}": i / 100 for i in range(100)}
    with mt.start_run("batched", params={"C": 1.0, "solver": "lbfgs"}) as run:
        counted.reset()
        run.log_metrics(metrics)
        assert counted.snapshot() == {LOG_BATCH: 1}
    data = mlflow_client.get_run(run.run_id).data
    assert data.metrics == metrics
    assert data.params == {"C": "1.0", "solver": "lbfgs"}


def test_params_over_the_batch_limit_are_chunked(counted, mlflow_client):
    with mt.start_run("many-params") as run:
        counted.reset()
        run.log_params({f"p{i}": i for i in range(250)})
        assert counted.snapshot() == {LOG_BATCH: 3}
    assert len(mlflow_client.get_run(run.run_id).data.params) == 250


def test_run_status_follows_the_block(mlflow_client):
    with mt.start_run("ok") as ok_run:
        pass
    with pytest.raises(RuntimeError), mt.start_run("boom") as failed_run:
        raise RuntimeError("training crashed")
    assert mlflow_client.get_run(ok_run.run_id).info.status == "FINISHED"
    assert mlflow_client.get_run(failed_run.run_id).info.status == "FAILED"


def test_run_lands_in_the_configured_experiment(mlflow_client, unique_name):
    name = unique_name("exp")
    mt.configure(experiment=name)
    with mt.start_run("x") as run:
        pass
    assert mlflow_client.get_experiment(run.experiment_id).name == name


@pytest.mark.slow
def test_log_model_registers_with_signature_contract_and_pinned_requirements(
    iris_data, unique_name, mlflow_client, tmp_path
):
    import mlflow
    import sklearn
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    name = unique_name("iris")
    with mt.start_run("logreg") as run:
        model = LogisticRegression(max_iter=300).fit(X, y)
        first = run.log_model(model, register_as=name, input_example=X[:5])
        second = run.log_model(model, register_as=name, input_example=X[:5])
    assert (first, second) == (1, 2)

    contract_path = mlflow_client.download_artifacts(run.run_id, "data_contract/input_schema.json", str(tmp_path))
    contract = json.loads(open(contract_path).read())
    assert [c["name"] for c in contract["columns"]] == list(X.columns)
    assert {c["type"] for c in contract["columns"]} == {"double"}
    assert contract["example_row"] == X.iloc[0].to_dict()

    loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert [spec.name for spec in loaded.metadata.get_input_schema().inputs] == list(X.columns)
    assert list(loaded.predict(X[:3])) == list(model.predict(X[:3]))

    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{name}/1")
    pins = open(requirements).read()
    assert f"scikit-learn=={sklearn.__version__}" in pins and "mlflow==" in pins


def test_log_model_needs_a_model_name(iris_data):
    from sklearn.dummy import DummyClassifier

    X, y = iris_data
    with mt.start_run("no-name") as run, pytest.raises(mt.ValidationError, match="MLOPS_MODEL_NAME"):
        run.log_model(DummyClassifier().fit(X, y), input_example=X[:2])


def test_log_model_rejects_unsupported_model_types():
    with mt.start_run("odd") as run, pytest.raises(mt.ValidationError, match="supported packages are"):
        run.log_model(object(), register_as="whatever")
