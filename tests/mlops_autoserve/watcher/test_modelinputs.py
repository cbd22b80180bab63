"""One model's tags parsed for that model alone: garbage becomes an error on it, never an
exception (milliseconds; real MLflow entities, no server)."""

from __future__ import annotations

import json

import pytest
from mlflow.entities.model_registry import (
    RegisteredModel,
    RegisteredModelAlias,
    RegisteredModelTag,
)
from mlops_autoserve.watcher.modelinputs import read_model

GOOD_ROLLOUT = {"to": "challenger", "candidate": 3, "baseline": 2, "steps": [25, 100], "step_seconds": 60.0,
                "max_error_rate": 0.01, "max_p95_ms": 200.0}

# 20+ kinds of garbage, each tried in every per-model tag
GARBAGE = ["", " ", "{", "[]", "{}", "null", "true", "-1", "0", "NaN", "1e9", "3.5", "99999999999999999999",
           '{"steps": []}', json.dumps({**GOOD_ROLLOUT, "steps": []}), json.dumps({**GOOD_ROLLOUT, "format": 9}),
           json.dumps({**GOOD_ROLLOUT, "max_p95_ms": float("nan")}), json.dumps({"alias": "x", "percent": -4}),
           json.dumps({"alias": ["nested", {"a": 1}]}), "[" * 3000 + "]" * 3000, "x" * 5000, "\u0000\udcff",
           json.dumps({"alias": "challenger", "percent": float("inf")})]
TAGS = ["mlops.rollout.Production", "mlops.shadow.Production", "mlops.autoserve.replicas",
        "mlops.autoserve.min_replicas", "mlops.autoserve.max_replicas"]


def model(tags: dict[str, str], name: str = "a") -> RegisteredModel:
    return RegisteredModel(name, tags=[RegisteredModelTag(k, v) for k, v in tags.items()],
                           aliases=[RegisteredModelAlias("Production", "2"), RegisteredModelAlias("challenger", "3")])


def every(_model: str, _alias: str) -> bool:
    return True


@pytest.mark.parametrize("tag", TAGS)
def test_garbage_in_any_tag_is_an_error_on_the_model_and_the_routes_stay(tag):
    for raw in GARBAGE:
        read = read_model(model({tag: raw}), every)
        assert read.routes == {("a", "Production"): 2, ("a", "challenger"): 3}, raw
        assert not read.rollouts and not read.shadows and not read.counts, raw
        assert len(read.errors) == 1 and read.errors[0].tag == tag, (raw, read.errors)
        error = read.errors[0]
        assert len(str(error)) <= 300 and error.kind in ("rollout", "shadow", "replicas", "min_replicas",
                                                        "max_replicas")


def test_good_tags_are_read_and_an_error_names_its_alias():
    read = read_model(model({"mlops.rollout.Production": json.dumps(GOOD_ROLLOUT),
                             "mlops.shadow.Production": json.dumps({"alias": "challenger", "percent": 10}),
                             "mlops.rollout.challenger": "{", "mlops.autoserve.replicas": "2"}), every)
    assert read.rollouts[("a", "Production")].candidate == 3
    assert read.shadows[("a", "Production")].percent == 10.0
    assert read.counts == {"replicas": 2}
    assert [(e.kind, e.alias) for e in read.errors] == [("rollout", "challenger")]


def test_a_floor_above_the_ceiling_is_refused_as_a_pair():
    read = read_model(model({"mlops.autoserve.min_replicas": "4", "mlops.autoserve.max_replicas": "2"}), every)
    assert "min_replicas" not in read.counts and "max_replicas" not in read.counts
    assert read.errors[0].kind == "max_replicas" and "below" in read.errors[0].detail
