"""The watcher's metadata publisher: the real read from the session's MLflow server, and the
controller's behaviour with a registry that hangs or fails (a stand-in fetch function)."""

from __future__ import annotations

import threading
import time

import pytest
from mlops_autoserve.modelmeta import metadata_path, read_metadata
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher import metadata as publisher_module
from mlops_autoserve.watcher.metadata import MetadataPublisher, fetch_metadata
from mlops_autoserve.watcher.observe import Snapshot
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey

from mlops_toolkit.waiting import wait_until


def test_a_versions_metadata_comes_from_its_mlmodel_example_requirements_and_contract(tracking_uri, served_model):
    meta = fetch_metadata(tracking_uri, served_model.name, served_model.good[0])
    assert meta.model == served_model.name and meta.version == served_model.good[0] and meta.run_id
    assert {"python_function", "sklearn"} <= set(meta.flavors)
    assert meta.parsed.kind == "columns"
    assert [t.name for t in meta.parsed.inputs] == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                                                    "petal width (cm)"]
    assert {t.datatype for t in meta.parsed.inputs} == {"FP64"}
    assert meta.input_example["dataframe_split"]["columns"][0] == "sepal length (cm)"
    assert any(r.startswith("scikit-learn") for r in meta.requirements)
    assert [c["name"] for c in meta.data_contract["columns"]][0] == "sepal length (cm)"


def test_a_version_without_artifacts_is_an_error_for_that_version(tracking_uri, served_model):
    meta = fetch_metadata(tracking_uri, served_model.name, served_model.broken)  # no MLmodel: nothing known
    assert meta.parsed.kind == "none" and meta.flavors == ()


def settings(tmp_path) -> AutoserveSettings:
    return AutoserveSettings(tracking_uri="http://127.0.0.1:9", state_dir=tmp_path)


def snapshot(*keys: tuple[str, int]) -> Snapshot:
    observed = tuple((Deployment(DeploymentKey(m, v), "http://127.0.0.1:9", f"ident-{m}-{v}", 0.0), True) for m, v in keys)
    return Snapshot(desired=None, observed=observed, now=time.monotonic(), wall=time.time())


def test_the_publisher_writes_each_running_version_once_off_the_reconcile_thread(tmp_path, tracking_uri,
                                                                                   served_model):
    calls, gate = [], threading.Event()

    def fetch(uri, model, version):
        calls.append((model, version))
        gate.wait(10)  # a registry that hangs
        return fetch_metadata(tracking_uri, model, version)

    publisher = MetadataPublisher(settings(tmp_path), fetch=fetch)
    try:
        key = (served_model.name, served_model.good[0])
        started = time.monotonic()
        for _ in range(5):
            publisher.reconcile(snapshot(key))
        assert time.monotonic() - started < 0.5  # never waits for the read
        gate.set()
        wait_until(publisher.idle, 30, what="metadata written")
        publisher.reconcile(snapshot(key))
        time.sleep(0.2)
        assert calls == [key]  # once, though asked six times
        assert read_metadata(tmp_path, *key).parsed.kind == "columns"
    finally:
        publisher.stop()


def test_a_failed_read_is_tried_again_later_and_never_stops_another_version(tmp_path, monkeypatch):
    monkeypatch.setattr(publisher_module, "RETRY_S", 0.3)
    attempts: dict[str, int] = {}

    def fetch(uri, model, version):
        attempts[model] = attempts.get(model, 0) + 1
        if model == "bad":
            raise ConnectionError("registry away")
        from mlops_autoserve.modelmeta import VersionMetadata
        return VersionMetadata(model, version)

    publisher = MetadataPublisher(settings(tmp_path), fetch=fetch)
    try:
        publisher.reconcile(snapshot(("bad", 1), ("good", 1)))
        wait_until(publisher.idle, 5, what="both tried")
        assert metadata_path(tmp_path, "good", 1).exists() and not metadata_path(tmp_path, "bad", 1).exists()
        publisher.reconcile(snapshot(("bad", 1), ("good", 1)))
        time.sleep(0.1)
        assert attempts == {"bad": 1, "good": 1}  # not again before RETRY_S
        time.sleep(0.3)
        publisher.reconcile(snapshot(("bad", 1), ("good", 1)))
        wait_until(lambda: attempts["bad"] == 2 and publisher.idle(), 5, what="retried")
        assert attempts["good"] == 1
    finally:
        publisher.stop()


@pytest.mark.parametrize("count", [300])
def test_at_most_max_pending_reads_wait(tmp_path, count):
    gate = threading.Event()

    def fetch(uri, model, version):
        gate.wait(10)
        raise ConnectionError("away")

    publisher = MetadataPublisher(settings(tmp_path), fetch=fetch)
    try:
        publisher.reconcile(snapshot(*((f"m{i}", 1) for i in range(count))))
        assert len(publisher._pending) == publisher_module.MAX_PENDING
    finally:
        gate.set()
        publisher.stop()
