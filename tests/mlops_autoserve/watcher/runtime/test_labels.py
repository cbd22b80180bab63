"""Docker and Swarm labels that autoserve did not write: a container (or service) carrying the
owner labels with garbage in the others is skipped with one warning, never a failed listing.

The parsers are pure functions: these run without a Docker engine (the runtimes' own tests
in test_docker.py / test_swarm.py run the real engine)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from mlops_autoserve.watcher.runtime.base import DeploymentKey
from mlops_autoserve.watcher.runtime.docker import (
    BadLabels,
    Labelled,
    read_labels,
    usable,
)

GOOD = {"mlops.autoserve": "true", "mlops.autoserve.instance": "abc", "mlops.model": "iris model",
        "mlops.version": "3", "mlops.replica": "1", "mlops.aliases": "Production,Staging", "mlops.port": "18555",
        "mlops.started_at": "1700000000.250", "mlops.env": "k" * 16}


def test_labels_autoserve_wrote_are_read():
    assert read_labels(GOOD) == Labelled(DeploymentKey("iris model", 3), 1700000000.25, 1, 18555,
                                         ("Production", "Staging"), "k" * 16)
    # a Swarm service carries no replica or port label; empty ones are the defaults
    assert read_labels({"mlops.model": "m", "mlops.version": "1", "mlops.aliases": "", "mlops.env": ""}) == Labelled(
        DeploymentKey("m", 1))


@pytest.mark.parametrize("change", [
    {"mlops.model": None}, {"mlops.model": ""}, {"mlops.version": None}, {"mlops.version": ""},
    {"mlops.version": "three"}, {"mlops.version": "3.0"}, {"mlops.version": "-3"}, {"mlops.replica": "one"},
    {"mlops.replica": "-1"}, {"mlops.port": "http"}, {"mlops.port": "70000"}, {"mlops.started_at": "yesterday"},
    {"mlops.started_at": "nan"}, {"mlops.started_at": "-inf"}, {"mlops.started_at": "1e400"},
], ids=lambda c: ",".join(f"{k}={v!r}" for k, v in c.items()))
def test_garbage_in_a_label_is_one_clear_error(change):
    labels = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(BadLabels) as caught:
        read_labels(labels)
    assert "mlops." in str(caught.value) and "\n" not in str(caught.value)


def test_a_container_with_garbage_labels_is_skipped_with_one_warning_while_it_exists(caplog):
    caplog.set_level(logging.WARNING, logger="autoserve.docker")
    good = SimpleNamespace(id="c1", name="mlops-serve-good", labels=GOOD)
    bad = SimpleNamespace(id="c2", name="mlops-serve-bad", labels={**GOOD, "mlops.version": "latest"})
    worse = SimpleNamespace(id="c3", name="mlops-serve-worse", labels={**GOOD, "mlops.replica": "x"})
    warned: set[str] = set()
    for _ in range(3):  # three watcher cycles
        listed = usable([bad, good, worse], lambda c: c.labels, warned, "container")
        assert [(c.id, info.key) for c, info in listed] == [("c1", DeploymentKey("iris model", 3))]
    warnings = [r for r in caplog.records if "labels are unusable" in r.getMessage()]
    assert [(r.container, r.error) for r in warnings] == [
        ("mlops-serve-bad", "mlops.version='latest' is not a number"),
        ("mlops-serve-worse", "mlops.replica='x' is not a number")]
    usable([good], lambda c: c.labels, warned, "container")  # the bad ones removed: forgotten
    assert warned == set()
    usable([bad], lambda c: c.labels, warned, "container")  # a new container with the same id: warned again
    assert len([r for r in caplog.records if "labels are unusable" in r.getMessage()]) == 3
