"""A small live stack for the monitoring tests, every part real and on loopback.

An MLflow server started with ``--expose-prometheus``, an autoserve watcher serving one
model (plus an alias on a version that cannot deploy, so failed-deploy series exist, two
shadows, a rollout that fails its gate, and the payload log on), a Pushgateway holding real
batch and live drift pushes and a blackbox exporter with our module file. Started once for
the package: the metric-name test and the real-Prometheus test share it (about 40 s, most
of it the deployments).
"""

from __future__ import annotations

import importlib.util
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import mlops_toolkit as mt
from mlops_toolkit.ops.local_server import LocalMlflowServer
from mlops_toolkit.ops.processes import free_port
from tests.conftest import need
from tests.daemons import Daemon, binary
from tests.harness import Watcher, wait_for
from tests.monitoring.support import MONITORING

DEPLOY_TIMEOUT = 90


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


def get_text(url: str, allow_error: bool = False) -> str:
    """The body of GET ``url``; with ``allow_error`` also of a 4xx/5xx answer (Prometheus
    explains a bad query in a 400's JSON body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        if not allow_error:
            raise
        return exc.read().decode()


@dataclass
class LiveStack:
    mlflow: LocalMlflowServer
    watcher: Watcher
    pushgateway: Daemon
    blackbox: Daemon
    model: str
    good_version: int
    broken_version: int
    targets_dir: Path  # the watcher's Prometheus file_sd directory
    root: Path


def _register_model(name: str, iris_data) -> tuple[int, int, int]:
    """Two real sklearn versions and one whose artifacts do not exist (it cannot deploy)."""
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    X, y = iris_data
    with mt.start_run("monitoring-model") as run:
        good = run.log_model(LogisticRegression(max_iter=300).fit(X, y), register_as=name, input_example=X[:3])
    with mt.start_run("monitoring-model-2") as run:
        second = run.log_model(LogisticRegression(C=0.5, max_iter=300).fit(X, y), register_as=name,
                               input_example=X[:3])
    client = MlflowClient(mt.settings().tracking_uri, registry_uri=mt.settings().tracking_uri)
    broken_run = client.create_run(client.get_experiment_by_name("monitoring-tests").experiment_id)
    broken = client.create_model_version(name, source=f"{broken_run.info.artifact_uri}/missing-model",
                                         run_id=broken_run.info.run_id)
    return good, second, int(broken.version)


@pytest.fixture(scope="package")
def live_stack(tmp_path_factory, iris_data) -> Iterator[LiveStack]:
    need(importlib.util.find_spec("prometheus_flask_exporter") is not None,
         "prometheus-flask-exporter is not installed: `mlflow server --expose-prometheus` needs it")
    pushgateway_bin = binary("prometheus-pushgateway", "pushgateway")
    blackbox_bin = binary("prometheus-blackbox-exporter", "blackbox_exporter")
    root = tmp_path_factory.mktemp("monitoring-stack")
    started = time.monotonic()
    stopping = []
    try:
        server = LocalMlflowServer(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts",
                                   extra_args=["--expose-prometheus", str(root / "mlflow-metrics")]).start()
        stopping.append(server.stop)
        mt.configure(tracking_uri=server.uri, experiment="monitoring-tests")
        model = f"iris-monitoring-{uuid.uuid4().hex[:6]}"
        good, second, broken = _register_model(model, iris_data)
        mt.set_alias(model, "Production", good)
        mt.set_alias(model, "broken", broken)
        mt.set_alias(model, "blue", good)  # a rollout of blue to green fails its gate: rollout series
        mt.set_alias(model, "green", second)
        # Shadows on the same version: their copies reach the same deployment, so the shadow
        # series the Rollouts dashboard and alert use exist without one more model server
        # (one compared as labels, one as numbers: each kind has its own counter).
        for alias in ("challenger", "staging", "canary"):
            mt.set_alias(model, alias, good)
        mt.set_shadow(model, "challenger", of="Production")
        mt.set_shadow(model, "canary", of="staging", compare="regression")

        targets_dir = root / "targets"
        watcher = Watcher(server.uri, root / "autoserve", [model], "--targets-file",
                          str(targets_dir / "serving.json"), "--gateway-instances", "2",  # as the compose stack
                          "--payload-log-rate", "1",
                          "--payload-log-db", f"sqlite:///{root / 'app.db'}").start()
        stopping.append(watcher.stop)
        # In memory only (see tests/conftest.py pushgateway).
        port = free_port()
        pushgateway = Daemon([pushgateway_bin, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                             port, root / "pushgateway.log")
        stopping.append(pushgateway.stop)
        port = free_port()
        blackbox = Daemon([blackbox_bin, f"--config.file={MONITORING / 'blackbox' / 'blackbox.yml'}",
                           f"--web.listen-address=127.0.0.1:{port}"], port, root / "blackbox.log")
        stopping.append(blackbox.stop)

        _push_drift(model, iris_data, pushgateway.url)
        wait_for(lambda: watcher.endpoint_ready("Production", good), DEPLOY_TIMEOUT,
                 what=f"Production ready (log {watcher.log_path})")
        wait_for(lambda: 'result="failed"' in watcher.metrics_text(), DEPLOY_TIMEOUT, what="a failed deploy")
        wait_for(lambda: (watcher.endpoints()["Production"].get("shadow") or {}).get("alias") == "challenger",
                 DEPLOY_TIMEOUT, what="the shadow in the route table")
        wait_for(lambda: (watcher.endpoints().get("staging", {}).get("shadow") or {}).get("alias") == "canary",
                 DEPLOY_TIMEOUT, what="the second shadow in the route table")
        for alias in ("Production", "staging"):  # labelled request and shadow series
            assert watcher.invoke(model, alias)[0] == 200
        wait_for(lambda: all(f"{name}{{" in watcher.metrics_text()
                             for name in ("autoserve_shadow_agreement_total", "autoserve_shadow_abs_diff_total")),
                 10, what="both kinds of shadow comparison")
        wait_for(lambda: 'result="written"' in watcher.metrics_text(), 10, what="payload-log rows written")
        _failed_rollout(watcher, model, good, second)
        print(f"\nmonitoring stack ready in {time.monotonic() - started:.1f} s")
        yield LiveStack(server, watcher, pushgateway, blackbox, model, good, broken, targets_dir, root)
    finally:
        for stop in reversed(stopping):
            stop()
        mt.configure()  # back to the environment's tracking URI, not this stopped server


def _push_drift(model: str, iris_data, gateway: str) -> None:
    """A real drift check (inputs shifted on one feature, so drift is detected) pushed the
    way dag_model_monitoring pushes it."""
    from mlops_toolkit.batch import drift

    X, _ = iris_data
    shifted = X.assign(**{X.columns[2]: X[X.columns[2]] + 2.0})
    report = drift.detect_drift(X, shifted)
    assert report.drift_detected
    drift.push_to_gateway(report, model, gateway, prediction_rows=len(shifted))
    drift.push_to_gateway(drift.detect_drift(X, X), model, gateway, source="live")


def _failed_rollout(watcher: Watcher, model: str, good: int, second: int) -> None:
    """A real rollout of blue (v good) to green (v second) whose p95 gate cannot hold, with
    an agreement gate: every gate gauge and a failed result are exported."""
    from mlops_toolkit import rollout as rollouts

    for alias, version in (("blue", good), ("green", second)):
        wait_for(lambda a=alias, v=version: watcher.endpoint_ready(a, v), DEPLOY_TIMEOUT, what=f"{alias} ready")
    rollouts.start_rollout(model, "green", "blue", steps=(50, 100), step_seconds=3, max_p95_ms=0.001,
                           min_agreement=0.5)

    def ended() -> bool:
        assert watcher.invoke(model, "blue")[0] == 200
        return rollouts.rollout_status(model, "blue").state != "running"

    wait_for(ended, 60, interval=0.05, what="the rollout to fail its gate")
    assert rollouts.rollout_status(model, "blue").state == "failed"
    wait_for(lambda: all(f"{name}{{" in watcher.metrics_text() for name in (
        "autoserve_rollout_step_error_ratio", "autoserve_rollout_step_p95_seconds",
        "autoserve_rollout_step_agreement_ratio")), 10, what="the rollout gate gauges")
