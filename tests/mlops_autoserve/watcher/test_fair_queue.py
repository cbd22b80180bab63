"""The fair work queue on real processes: a model whose every replica waits on an environment
build that hangs (a package index on loopback that never answers) holds two deploy slots
and nothing else; another model's alias moves, and the stop of its unused deployment, go
on within a few cycles. One watcher, three serve starts."""

from __future__ import annotations

import time
import uuid

import pytest

import mlops_toolkit as mt
from tests.harness import Watcher, wait_for
from tests.mlops_autoserve.watcher.buildfaults import StuckIndex, register_requirements

pytestmark = pytest.mark.slow
POLL = 0.5  # the watcher's registry poll interval (seconds)
START = 10.0  # seconds from an alias move to its serve process started: a few polls and the requirements check
# then to serving: a serve start (~7-11 s when the 2 cores are free; 37 s measured while other suites ran)
MOVE = 90.0
STOP = 15.0  # seconds from the switch to the old deployment gone: drain (2 s) and a stop
REPLICAS_TAG = "mlops.autoserve.replicas"


def test_a_model_stuck_in_its_build_never_holds_up_another_models_moves_and_stops(
        tracking_uri, mlflow_client, served_model, tmp_path, monkeypatch):
    monkeypatch.setenv("UV_HTTP_TIMEOUT", "600")  # the watcher's uv waits on the stuck index, not 30 s
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    model, (v1, v2, v3) = served_model.name, served_model.good
    stuck = f"stuck-{uuid.uuid4().hex[:6]}"
    with StuckIndex() as index:
        requirements = [f"--index-url {index.url}", "mlops-stuck-package==1.0"]
        (version,) = register_requirements(mlflow_client, stuck, requirements)
        mlflow_client.set_registered_model_tag(stuck, REPLICAS_TAG, "8")  # more than the deploy slots in all
        watcher = Watcher(tracking_uri, tmp_path / "state", [stuck, model], "--env-manager", "auto",
                          "--env-cache", str(tmp_path / "envs"), "--env-build-timeout", "600",
                          "--deploy-workers", "3", "--deploy-workers-per-model", "2", poll_interval=POLL).start()
        try:
            watcher.serving(model, prod=v1)
            mt.set_alias(stuck, "stuck", version)
            building = wait_for(lambda: index.connections and (e := watcher.endpoints().get("stuck")) and e["building"],
                                60, what=f"the stuck model's build waiting on the index ({watcher.log_path})")
            assert building["version"] == version  # its eight replicas are queued behind it from here on
            timings = []
            for before, after in ((v1, v2), (v2, v3)):
                asked = time.time()
                mt.set_alias(model, "prod", after)
                record = wait_for(lambda a=after: _record(watcher, model, a), START + 5,
                                  what=f"v{after} started ({watcher.log_path})")
                assert record["started_at"] - asked < START  # not queued behind the stuck model's deploys
                wait_for(lambda a=after: watcher.endpoint_ready("prod", a), MOVE, what=f"prod on v{after}")
                moved = time.time()
                wait_for(lambda b=before: _record(watcher, model, b) is None, STOP,
                         what=f"v{before}, unused now, stopped ({watcher.log_path})")
                timings.append((round(record["started_at"] - asked, 1), round(moved - asked, 1),
                                round(time.time() - moved, 1)))
            status, headers, _ = watcher.invoke(model, "prod")
            assert status == 200 and headers["X-Model-Version"] == str(v3)
            still = watcher.endpoints()["stuck"]  # the build did hang all along: nothing else was waiting on it
            assert still["building"] and still["version"] is None and index.connections
            assert not any(r["model"] == stuck for r in watcher.records())
            print(f"alias move to serve start, to serving, then to the old deployment stopped (s): {timings}")
        finally:
            index.close()  # the build fails now, so the watcher's shutdown does not wait for it
            assert watcher.stop() == 0


def _record(watcher: Watcher, model: str, version: int) -> dict | None:
    return next((r for r in watcher.records() if r["model"] == model and r["version"] == version), None)
