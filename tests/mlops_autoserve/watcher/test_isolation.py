"""One model's bad input stays with that model: the real registry (the session's MLflow
server), an in-memory runtime whose deployments answer at once, and the watcher's real
reconcile cycles. Milliseconds per cycle, so every kind of garbage in every per-model tag
can be tried; the same on real processes is in test_isolation_processes.py."""

from __future__ import annotations

import json
import logging

import pytest
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.routetable import read, table_path
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.reconciler import Reconciler
from mlops_autoserve.watcher.runtime.base import Health

from tests.mlops_autoserve.watcher.test_modelinputs import GARBAGE, GOOD_ROLLOUT, TAGS
from tests.mlops_autoserve.watcher.test_reconciler import FakeRuntime


class ReadyRuntime(FakeRuntime):
    """Every started deployment answers /ping at once."""

    def start(self, key, aliases=(), replica=0, env=None):
        deployment = super().start(key, aliases, replica, env)
        self.health_of[deployment.ident] = Health.READY
        return deployment


def cycles_until(reconciler: Reconciler, done, limit: int = 3) -> int:
    """Reconcile cycles (each reading the registry) until ``done()``; the count, or limit + 1."""
    for cycle in range(1, limit + 1):
        reconciler.source.due = True
        reconciler.reconcile_once()
        if done():
            return cycle
    return limit + 1


@pytest.fixture()
def two_models(make_model, mlflow_client, tmp_path):
    a, b = make_model(versions=3), make_model(versions=2)
    for model, version in ((a, 2), (b, 1)):
        mlflow_client.set_registered_model_alias(model, "Production", str(version))
    mlflow_client.set_registered_model_alias(a, "challenger", "3")
    mlflow_client.set_registered_model_alias(b, "challenger", "2")
    runtime = ReadyRuntime()
    for model, version in ((a, 2), (a, 3), (b, 1), (b, 2)):
        runtime.add(f"{model}-v{version}", version, model=model)
    settings = AutoserveSettings(tracking_uri=mlflow_client.tracking_uri, state_dir=tmp_path, smoke_test=False,
                                 drain_seconds=3600.0, poll_interval=3600, models=frozenset({a, b}))
    reconciler = Reconciler(settings, runtime, AutoserveMetrics())
    reconciler.reconcile_once()
    return a, b, reconciler, runtime


def serving(tmp_path, model: str, alias: str = "Production") -> int | None:
    route = read(table_path(tmp_path)).get(model, alias)
    return None if route is None else route.version


def test_garbage_in_any_tag_of_one_model_never_stops_another_models_moves(two_models, mlflow_client, tmp_path,
                                                                          caplog):
    a, b, reconciler, _ = two_models
    caplog.set_level(logging.WARNING, logger="autoserve.desired")
    tried = 0
    for tag in TAGS:
        for raw in GARBAGE:
            try:
                mlflow_client.set_registered_model_tag(a, tag, raw)
            except Exception:  # noqa: BLE001 - the registry itself refused the value (PostgreSQL: NUL bytes, > 5,000)
                continue
            tried += 1
            target = 2 if serving(tmp_path, b) == 1 else 1
            mlflow_client.set_registered_model_alias(b, "Production", str(target))
            cycles = cycles_until(reconciler, lambda: serving(tmp_path, b) == target)  # noqa: B023
            assert cycles <= 3, f"{tag}={raw[:60]!r}: {b}@Production not on v{target} after 3 cycles"
            route = read(table_path(tmp_path)).get(a, "Production")
            assert route.version == 2 and route.problems and route.problems[0].startswith(f"tag {tag}:"), (tag, raw)
            assert reconciler.last_cycle_error is None
        mlflow_client.delete_registered_model_tag(a, tag)
    assert tried >= 20 * len(TAGS)
    reconciler.source.due = True
    reconciler.reconcile_once()
    assert read(table_path(tmp_path)).get(a, "Production").problems == ()  # recovered once the tag is gone
    assert reconciler.metrics.model_errors.collect()[0].samples == []
    lines = [r for r in caplog.records if r.getMessage().startswith("ignoring a bad input")]
    assert len(lines) == tried  # one line per distinct value, not one per cycle (3 cycles each)


def test_a_bad_tag_shows_on_the_models_routes_and_metric_and_a_fix_recovers(two_models, mlflow_client, tmp_path):
    a, b, reconciler, _ = two_models
    mlflow_client.set_registered_model_tag(a, "mlops.rollout.Production", json.dumps({**GOOD_ROLLOUT, "steps": []}))
    mlflow_client.set_registered_model_tag(a, "mlops.autoserve.replicas", "lots")
    reconciler.source.due = True
    reconciler.reconcile_once()
    table = read(table_path(tmp_path))
    production, challenger = table.get(a, "Production"), table.get(a, "challenger")
    assert len(production.problems) == 2 and len(challenger.problems) == 1  # the rollout tag is Production's
    assert "steps must be a list" in " ".join(production.problems)
    assert table.get(b, "Production").problems == ()
    errors = reconciler.metrics.model_errors
    assert errors.labels(a, "rollout")._value.get() == 1 and errors.labels(a, "replicas")._value.get() == 1

    rollout = {**GOOD_ROLLOUT, "candidate": 3, "baseline": 2, "step_seconds": 600}
    mlflow_client.set_registered_model_tag(a, "mlops.rollout.Production", json.dumps(rollout))
    mlflow_client.delete_registered_model_tag(a, "mlops.autoserve.replicas")
    reconciler.source.due = True
    reconciler.reconcile_once()
    production = read(table_path(tmp_path)).get(a, "Production")
    assert production.problems == () and production.canary is not None and production.canary.version == 3


def test_a_controller_that_fails_skips_its_own_work_not_the_routes(two_models, mlflow_client, tmp_path):
    """A rollout whose model read fails (here: the registry refuses the model's name)
    is judged again next cycle; routes are still published."""
    a, b, reconciler, _ = two_models
    mlflow_client.set_registered_model_tag(a, "mlops.rollout.Production", json.dumps(
        {**GOOD_ROLLOUT, "candidate": 3, "baseline": 2, "step_seconds": 600}))
    reconciler.source.due = True
    reconciler.reconcile_once()
    broken = reconciler.rollouts._client
    reconciler.rollouts._client = lambda: (_ for _ in ()).throw(ConnectionError("registry hiccup"))
    mlflow_client.set_registered_model_alias(b, "Production", "2")
    try:
        assert cycles_until(reconciler, lambda: serving(tmp_path, b) == 2) == 1
    finally:
        reconciler.rollouts._client = broken
    assert read(table_path(tmp_path)).get(a, "Production").canary.version == 3  # still running, judged next cycle
