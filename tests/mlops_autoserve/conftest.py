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


@dataclass
class EnvModels:
    """Models the test suite's own environment cannot serve (it has neither LightGBM nor emoji)."""

    lightgbm: str
    lightgbm_versions: list[int]  # same requirements: one environment for both
    emoji: str
    emoji_version: int  # a custom pyfunc importing emoji
    unresolvable: int  # a version of the emoji model requiring a package no index has


@pytest.fixture(scope="session")
def env_models(tracking_uri, tmp_path_factory) -> EnvModels:
    """Log them from an authoring environment built with uv from PyPI (real packages, real index)."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    import mlflow
    from mlops_autoserve.watcher.envstore import uv_binary, uv_environment

    from tests.conftest import need

    assert importlib.util.find_spec("lightgbm") is None and importlib.util.find_spec("emoji") is None, \
        "the test environment must not have lightgbm or emoji: the point is serving what it lacks"
    root = tmp_path_factory.mktemp("authoring")
    uv, venv = uv_binary(), root / "venv"
    env = {**uv_environment(), "UV_CACHE_DIR": str(root / "uv-cache")}
    python = str(venv / "bin" / "python")
    for command in ([uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
                    [uv, "pip", "install", "--quiet", "--python", python, f"mlflow=={mlflow.__version__}",
                     "lightgbm", "emoji", "scikit-learn", "pandas"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        need(done.returncode == 0, f"cannot build the authoring environment from the package index: {done.stderr[-500:]}")
    suffix = uuid.uuid4().hex[:6]
    names = (f"lgbm-{suffix}", f"emojify-{suffix}")
    script = Path(__file__).with_name("envmodels") / "log_models.py"
    done = subprocess.run([python, str(script), tracking_uri, *names], capture_output=True, text=True, timeout=300,
                          env={**env, "MLFLOW_TRACKING_URI": tracking_uri})
    assert done.returncode == 0, done.stderr[-2000:]
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    return EnvModels(names[0], versions["lightgbm"], names[1], versions["emoji"][0], versions["emoji"][1])
