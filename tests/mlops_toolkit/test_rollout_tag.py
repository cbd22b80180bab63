"""A rollout tag's value is checked field by field: anything a registry writer could leave
in it is refused with a reason, never handed to the gate (milliseconds, no MLflow)."""

from __future__ import annotations

import json

import pytest

from mlops_toolkit.rollout import ROLLOUT_FORMAT, Rollout, parse_rollout, save

GOOD = {"to": "challenger", "candidate": 3, "baseline": 2, "steps": [25, 100], "step_seconds": 60.0,
        "max_error_rate": 0.01, "max_p95_ms": 200.0, "step": 0, "step_started": 1000.0, "state": "running",
        "reason": None, "started_by": "ana"}


def with_(**changes) -> str:
    return json.dumps({**GOOD, **changes})


def test_a_tag_written_by_save_reads_back_the_same():
    class Client:
        def set_registered_model_tag(self, model, key, value):
            self.value = value

    client = Client()
    original = Rollout("iris", "Production", "challenger", 3, 2, (25, 100), 60.0, 0.01, 200.0, min_agreement=0.9,
                       step_started=1000.0, started_by="ana")
    save(client, original)
    assert json.loads(client.value)["format"] == ROLLOUT_FORMAT
    assert parse_rollout("iris", "Production", client.value) == original
    assert parse_rollout("iris", "Production", json.dumps(GOOD)).steps == (25, 100)  # no format: the first one


GARBAGE = {
    "empty": "",
    "not json": "{steps: [",
    "a list": "[]",
    "a number": "42",
    "null": "null",
    "empty steps": with_(steps=[]),
    "steps not a list": with_(steps="25,100"),
    "steps decreasing": with_(steps=[100, 25]),
    "steps not ending at 100": with_(steps=[25, 50]),
    "steps zero": with_(steps=[0, 100]),
    "steps too many": with_(steps=list(range(1, 101)) + [100]),
    "step past the last": with_(step=2),
    "step negative": with_(step=-1),
    "step a float": with_(step=0.5),
    "candidate missing": json.dumps({k: v for k, v in GOOD.items() if k != "candidate"}),
    "candidate a string": with_(candidate="3"),
    "candidate zero": with_(candidate=0),
    "candidate a boolean": with_(candidate=True),
    "error rate NaN": with_(max_error_rate=float("nan")),
    "p95 infinite": with_(max_p95_ms=float("inf")),
    "step seconds negative": with_(step_seconds=-5),
    "agreement above 1": with_(min_agreement=1.5),
    "difference NaN": with_(max_mean_abs_diff=float("nan")),
    "state unknown": with_(state="paused"),
    "to empty": with_(to=""),
    "to nested": with_(to={"a": [1]}),
    "step_started NaN": with_(step_started=float("nan")),
    "reason a number": with_(reason=5),
    "another format": with_(format=2),
    "unknown field": with_(percent_now=50),
    "deeply nested": "[" * 5000 + "]" * 5000,
}


@pytest.mark.parametrize("raw", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_is_refused_with_a_reason(raw):
    with pytest.raises(ValueError) as caught:
        parse_rollout("iris", "Production", raw)
    assert str(caught.value) and len(str(caught.value)) < 200
