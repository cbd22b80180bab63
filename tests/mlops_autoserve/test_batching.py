"""Merging requests and splitting answers: a property test with a real sklearn model (each
batch scored merged and each request scored alone must agree row by row), and the cases
that must go alone or refuse to split. The scorer parses the four MLflow JSON formats and
CSV as MLflow's scoring server does (pandas for DataFrames, numpy for tensors); the real
server is in the gateway's batching tests."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pandas as pd
import pytest
from mlops_autoserve.batching import MAX_PART_BYTES, merge, parse, split
from sklearn.linear_model import LogisticRegression

from tests.harness import IRIS_COLUMNS


@pytest.fixture(scope="module")
def model(iris_data) -> LogisticRegression:
    X, y = iris_data
    return LogisticRegression(max_iter=300).fit(X, y)


def score(model: LogisticRegression, body: bytes, content_type: str) -> bytes:
    if content_type == "text/csv":
        frame = pd.read_csv(io.StringIO(body.decode()))
    else:
        request = json.loads(body)
        if "dataframe_split" in request:
            frame = pd.DataFrame(request["dataframe_split"]["data"], columns=request["dataframe_split"]["columns"])
        elif "dataframe_records" in request:
            frame = pd.DataFrame(request["dataframe_records"])
        else:
            frame = pd.DataFrame(np.array(request.get("inputs", request.get("instances"))), columns=IRIS_COLUMNS)
    return json.dumps({"predictions": model.predict(frame.astype(float)[IRIS_COLUMNS]).tolist()}).encode()


def random_request(rng: random.Random, fmt: str) -> tuple[bytes, str]:
    rows = [[round(rng.uniform(4, 8), 1), round(rng.uniform(2, 4.5), 1), round(rng.uniform(1, 7), 1),
             round(rng.uniform(0.1, 2.5), 1)] for _ in range(rng.randint(1, 20))]
    if fmt == "csv":
        return ("\n".join([",".join(IRIS_COLUMNS), *(",".join(map(str, r)) for r in rows)]) + "\n").encode(), "text/csv"
    if fmt == "dataframe_split":
        request = {fmt: {"columns": IRIS_COLUMNS, "data": rows}}
    elif fmt == "dataframe_records":
        request = {fmt: [dict(zip(IRIS_COLUMNS, r, strict=True)) for r in rows]}
    else:
        request = {fmt: rows}
    return json.dumps(request).encode(), "application/json"


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "inputs", "instances", "csv"])
def test_every_merged_batch_splits_into_exactly_what_each_request_gets_alone(model, fmt):
    rng = random.Random(fmt)
    mis_split = 0
    for _ in range(200):
        requests = [random_request(rng, fmt) for _ in range(rng.randint(1, 12))]
        parts = [parse(body, kind) for body, kind in requests]
        assert all(p is not None for p in parts)
        assert len({p.key for p in parts}) == 1
        body, kind = merge(parts)
        answers = split(score(model, body, kind), [p.rows for p in parts])
        alone = [json.loads(score(model, b, k)) for b, k in requests]
        mis_split += sum(json.loads(a) != e for a, e in zip(answers, alone, strict=True))
    assert mis_split == 0


def test_named_tensors_merge_by_name_and_split_per_row():
    parts = [parse(json.dumps({"inputs": {"a": [[1, 2]] * n, "b": [0.5] * n}}).encode(), None) for n in (1, 3)]
    assert parts[0].key == parts[1].key
    body, _ = merge(parts)
    assert json.loads(body) == {"inputs": {"a": [[1, 2]] * 4, "b": [0.5] * 4}}
    answer = json.dumps({"predictions": {"x": [1, 2, 3, 4], "y": [5, 6, 7, 8]}}).encode()
    assert [json.loads(a) for a in split(answer, [1, 3])] == [{"predictions": {"x": [1], "y": [5]}},
                                                              {"predictions": {"x": [2, 3, 4], "y": [6, 7, 8]}}]


@pytest.mark.parametrize(("body", "content_type"), [
    (json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1]]}, "params": {"k": 1}}), None),  # params
    (json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1]], "index": [7]}}), None),  # an index
    (json.dumps({"dataframe_split": {"columns": ["a"], "data": [[1], [1.5]]}}), None),  # int and float mixed
    (json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}), None),  # short rows
    (json.dumps({"dataframe_records": [{"a": 1}, {"b": 1}]}), None),  # different keys
    (json.dumps({"inputs": [[1, 2], [1, 2, 3]]}), None),  # ragged
    (json.dumps({"inputs": {"a": [1, 2], "b": [1]}}), None),  # unequal tensors
    (json.dumps({"something": [1]}), None),  # unknown format
    (json.dumps([1, 2]), None),
    (b"not json", None),
    ('a,b\n"x,y",1\n', "text/csv"),  # quotes
    ("a,b\n1\n", "text/csv"),  # short row
    ("a,b\n1,2\n", "application/octet-stream"),
    (json.dumps({"inputs": [[0.5] * 64] * (MAX_PART_BYTES // 200)}), None),  # over the size limit
])
def test_requests_that_cannot_be_merged_go_alone(body, content_type):
    assert parse(body.encode() if isinstance(body, str) else body, content_type) is None


def test_different_columns_types_or_formats_never_share_a_key():
    keys = {parse(json.dumps(r).encode(), None).key for r in (
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}},
        {"dataframe_split": {"columns": ["b", "a"], "data": [[1, 2]]}},
        {"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, 2]]}},
        {"dataframe_split": {"columns": ["a", "b"], "data": [["x", 2]]}},
        {"dataframe_records": [{"a": 1, "b": 2}]},
        {"inputs": [[1, 2]]},
        {"instances": [[1, 2]]},
        {"inputs": [[1, 2, 3]]},
    )}
    assert len(keys) == 8
    with pytest.raises(ValueError):
        merge([parse(b'{"inputs": [[1, 2]]}', None), parse(b'{"instances": [[1, 2]]}', None)])


@pytest.mark.parametrize("answer", [
    {"predictions": [1, 2]},  # fewer than the 3 rows sent
    {"predictions": 7},  # one number per call
    {"predictions": {"x": [1, 2, 3], "y": [1]}},  # a per-column output not one value per row
    {"predictions": [1, 2, 3], "extra": 1},
    "three",
])
def test_an_answer_that_is_not_one_prediction_per_row_is_never_split(answer):
    assert split(json.dumps(answer).encode(), [1, 2]) is None
    assert split(b"<html>", [1, 2]) is None


def test_bare_list_and_record_answers_split_per_row():
    assert [json.loads(a) for a in split(b"[1, 2, 3]", [2, 1])] == [[1, 2], [3]]
    records = {"predictions": [{"label": 1}, {"label": 0}, {"label": 2}]}
    assert [json.loads(a) for a in split(json.dumps(records).encode(), [1, 2])] == [
        {"predictions": [{"label": 1}]}, {"predictions": [{"label": 0}, {"label": 2}]}]
