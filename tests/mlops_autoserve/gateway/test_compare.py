"""How a shadow's answer is compared with the caller's (pure, no processes)."""

from __future__ import annotations

import json

import pytest
from mlops_autoserve.gateway.compare import compare


def body(predictions) -> bytes:
    return json.dumps({"predictions": predictions}).encode()


def test_labels_count_equal_positions():
    result = compare(body([0, 2, 1, 1]), body([0, 1, 1, 1]))
    assert (result.kind, result.rows, result.agree) == ("classification", 4, 3)


def test_floats_sum_absolute_differences():
    result = compare(body([1.5, 2.25]), body([1.0, 2.75]))
    assert (result.kind, result.rows, result.abs_diff_sum) == ("regression", 2, 1.0)


def test_rows_of_probabilities_and_column_dicts_are_flattened():
    assert compare(body([[0.1, 0.9], [0.8, 0.2]]), body([[0.2, 0.8], [0.8, 0.2]])).abs_diff_sum == pytest.approx(0.2)
    assert compare(body({"a": [1, 2], "b": [3, 4]}), body({"a": [1, 2], "b": [3, 5]})).agree == 3


def test_a_forced_mode_wins_over_auto():
    assert compare(body([1, 2]), body([1, 3]), "regression").abs_diff_sum == 1.0
    assert compare(body(["cat", "dog"]), body(["cat", "cat"]), "classification").agree == 1


@pytest.mark.parametrize("left, right", [(body([1, 2]), body([1])), (b"not json", body([1])), (body([]), body([])),
                                         (body(["a"]), body(["b"])[:-3])])
def test_answers_that_cannot_be_lined_up_are_a_mismatch(left, right):
    result = compare(left, right)
    assert (result.kind, result.rows) == ("mismatch", 0)
