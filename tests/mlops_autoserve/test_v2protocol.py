"""V2 (Open Inference Protocol) bodies to and from MLflow's scoring server, on real MLflow
signatures; the answers MLflow gives are the shapes ``mlflow models serve`` sends."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec
from mlops_autoserve.modelmeta import Signature, parse_signature
from mlops_autoserve.v2protocol import (
    V2Error,
    backend_error,
    infer_answer,
    infer_request,
    model_metadata,
)

IRIS = pd.DataFrame({"sepal length (cm)": [5.1, 6.2], "sepal width (cm)": [3.5, 2.9],
                     "petal length (cm)": [1.4, 4.3], "petal width (cm)": [0.2, 1.3]})
COLUMNS = parse_signature(infer_signature(IRIS, np.array([0, 1])).to_dict())
TENSOR = parse_signature(infer_signature(np.zeros((2, 4)), np.zeros(2)).to_dict())


def column_inputs(frame: pd.DataFrame, shape_1: bool = True) -> list[dict]:
    return [{"name": c, "shape": [len(frame), 1] if shape_1 else [len(frame)], "datatype": "FP64",
             "data": frame[c].tolist()} for c in frame.columns]


def body(**request) -> bytes:
    return json.dumps(request).encode()


def test_columns_become_a_dataframe_split_in_the_signature_order():
    inputs = list(reversed(column_inputs(IRIS)))  # any order of inputs
    translated = infer_request(body(id="r1", inputs=inputs), COLUMNS)
    assert json.loads(translated.body) == {"dataframe_split": {"columns": list(IRIS.columns),
                                                               "data": IRIS.values.tolist()}}
    assert translated.id == "r1" and translated.outputs == ()
    nested = [{**i, "data": [[v] for v in i["data"]]} for i in column_inputs(IRIS, shape_1=True)]
    assert infer_request(body(inputs=nested), COLUMNS).body == translated.body  # nested data, same request
    assert infer_request(body(inputs=column_inputs(IRIS, shape_1=False)), COLUMNS).body == translated.body


def test_a_tensor_signature_gets_the_array_reshaped():
    data = list(range(8))
    translated = infer_request(body(inputs=[{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                                             "data": [float(d) for d in data]}]), TENSOR)
    assert json.loads(translated.body) == {"inputs": [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]}
    named = parse_signature(ModelSignature(inputs=Schema([TensorSpec(np.dtype("int64"), (-1, 2), "a"),
                                                          TensorSpec(np.dtype("int64"), (-1,), "b")])).to_dict())
    translated = infer_request(body(inputs=[{"name": "a", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                                            {"name": "b", "shape": [1], "datatype": "INT64", "data": [3]}]), named)
    assert json.loads(translated.body) == {"inputs": {"a": [[1, 2]], "b": [3]}}


def test_parameters_reach_mlflow_only_when_the_model_declares_them():
    with_params = parse_signature(ModelSignature(inputs=Schema.from_json(
        json.dumps([{"type": "double", "name": "x"}])), params=ParamSchema([ParamSpec("k", "long", 1)])).to_dict())
    inputs = [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]
    sent = json.loads(infer_request(body(inputs=inputs, parameters={"k": 5, "other": 1}), with_params).body)
    assert sent["params"] == {"k": 5}
    without = Signature("columns", with_params.inputs)
    assert "params" not in json.loads(infer_request(body(inputs=inputs, parameters={"k": 5}), without).body)


@pytest.mark.parametrize(("request_body", "message"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (body(inputs=[]), "non-empty list"),
    (body(inputs=[{"shape": [1], "datatype": "FP64", "data": [1.0]}]), "has no name"),
    (body(inputs=[{"name": "x", "shape": [2, -1], "datatype": "FP64", "data": [1.0]}]), "non-negative"),
    (body(inputs=[{"name": "x", "shape": [100000, 100000], "datatype": "FP64", "data": []}]), "more than"),
    (body(inputs=[{"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1.0]}]), "is not one of"),
    (body(inputs=[{"name": "x", "shape": [1], "datatype": "FP64"}]), "has no 'data'"),
    (body(inputs=[{"name": "x", "shape": [3], "datatype": "FP64", "data": [1.0, 2.0]}]), "needs 3 values"),
    (body(inputs=[{"name": "x", "shape": [1], "datatype": "FP64", "data": ["a"]}]), "is FP64 but holds"),
    (body(inputs=[{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}]), "is INT64 but holds"),
    (body(inputs=[{"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]}]), "is BOOL but holds"),
    (body(inputs=[{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]},
                  {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]), "given twice"),
])
def test_malformed_requests_are_400_with_a_message_that_names_the_problem(request_body, message):
    with pytest.raises(V2Error) as raised:
        infer_request(request_body, Signature())
    assert raised.value.status == 400 and message in str(raised.value)


def test_requests_that_do_not_fit_the_signature_are_400_naming_what_the_model_takes():
    good = column_inputs(IRIS)
    cases = {
        "unknown input 'colour'": [*good, {"name": "colour", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}],
        "missing input 'petal width (cm)'": good[:3],
        "is FP32; the model takes FP64": [{**good[0], "datatype": "FP32"}, *good[1:]],
        "different numbers of rows": [{**good[0], "shape": [1, 1], "data": [1.0]}, *good[1:]],
        "a column is [N] or [N, 1]": [{**good[0], "shape": [1, 2]}, *good[1:]],
    }
    for message, inputs in cases.items():
        with pytest.raises(V2Error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")) as raised:
            infer_request(body(inputs=inputs), COLUMNS)
        assert raised.value.status == 400
    with pytest.raises(V2Error, match=r"has shape \[2, 3\]; the model takes \[-1, 4\]"):
        infer_request(body(inputs=[{"name": "input-0", "shape": [2, 3], "datatype": "FP64", "data": [0.0] * 6}]),
                      TENSOR)


def binary_body(tensors: list[tuple[dict, bytes]]) -> tuple[bytes, int]:
    """A body as tritonclient sends it by default: JSON, then each tensor's raw bytes."""
    header = json.dumps({"inputs": [{**t, "parameters": {"binary_data_size": len(raw)}} for t, raw in tensors]})
    return header.encode() + b"".join(raw for _, raw in tensors), len(header)


def test_binary_tensor_data_is_decoded_as_the_json_data_would_be():
    frame = IRIS.astype("float64")
    tensors = [({"name": c, "shape": [2, 1], "datatype": "FP64"}, frame[c].to_numpy().tobytes())
               for c in frame.columns]
    raw, length = binary_body(tensors)
    assert infer_request(raw, COLUMNS, length).body == infer_request(body(inputs=column_inputs(IRIS)), COLUMNS).body
    words = [({"name": "text", "shape": [2], "datatype": "BYTES"},
              b"".join(len(w).to_bytes(4, "little") + w for w in (b"hi", "\u00e9t\u00e9".encode())))]
    raw, length = binary_body(words)
    sent = json.loads(infer_request(raw, Signature(), length).body)
    assert sent["dataframe_split"]["data"] == [["hi"], ["\u00e9t\u00e9"]]
    ints = [({"name": "n", "shape": [3], "datatype": "INT32"}, np.array([1, -2, 3], dtype="<i4").tobytes())]
    raw, length = binary_body(ints)
    assert json.loads(infer_request(raw, Signature(), length).body)["dataframe_split"]["data"] == [[1], [-2], [3]]


@pytest.mark.parametrize(("tensors", "cut", "message"), [
    ([({"name": "x", "shape": [2], "datatype": "FP64"}, b"\0" * 8)], 0, "2 FP64 values are 16 bytes, got 8"),
    ([({"name": "x", "shape": [1], "datatype": "FP64"}, b"\0" * 8)], 4, "does not fit"),
    ([({"name": "x", "shape": [1], "datatype": "BYTES"}, b"\x09\0\0\0abc")], 0, "cut off"),
])
def test_binary_data_that_does_not_add_up_is_400(tensors, cut, message):
    raw, length = binary_body(tensors)
    with pytest.raises(V2Error, match=message) as raised:
        infer_request(raw[:len(raw) - cut], Signature(), length)
    assert raised.value.status == 400
    with pytest.raises(V2Error, match="does not fit a body"):
        infer_request(b"{}", Signature(), 10)
    with pytest.raises(V2Error, match="belong to no input"):
        infer_request(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}xyz',
                      Signature(), len(b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}'))


def test_answers_become_outputs_named_by_the_signature_with_the_version_and_id():
    request = infer_request(body(id="42", inputs=column_inputs(IRIS)), COLUMNS)
    out = infer_answer(b'{"predictions": [0, 1]}', "iris", "3", request, COLUMNS)
    assert out == {"model_name": "iris", "model_version": "3", "id": "42",
                   "outputs": [{"name": "output-0", "shape": [2], "datatype": "INT64", "data": [0, 1]}]}


def test_answers_without_an_output_signature_infer_names_shapes_and_datatypes():
    request = infer_request(body(inputs=[{"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}]),
                            Signature())
    assert infer_answer(b'{"predictions": [[0.1, 0.9], [0.8, 0.2]]}', "m", "1", request, Signature())["outputs"] == [
        {"name": "predictions", "shape": [2, 2], "datatype": "FP64", "data": [0.1, 0.9, 0.8, 0.2]}]
    assert infer_answer(b'{"predictions": ["setosa", "virginica"]}', "m", "1", request, Signature())["outputs"] == [
        {"name": "predictions", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]}]
    records = b'{"predictions": [{"label": 1, "score": 0.5}, {"label": 0, "score": 0.25}]}'
    assert infer_answer(records, "m", "1", request, Signature())["outputs"] == [
        {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]},
        {"name": "score", "shape": [2], "datatype": "FP64", "data": [0.5, 0.25]}]
    assert infer_answer(b'{"predictions": {"a": [true, false]}}', "m", "1", request, Signature())["outputs"] == [
        {"name": "a", "shape": [2], "datatype": "BOOL", "data": [True, False]}]


def test_requested_outputs_are_kept_in_order_and_an_unknown_one_is_400():
    inputs = [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]
    records = b'{"predictions": [{"label": 1, "score": 0.5}]}'
    request = infer_request(body(inputs=inputs, outputs=[{"name": "score"}]), Signature())
    assert [o["name"] for o in infer_answer(records, "m", "1", request, Signature())["outputs"]] == ["score"]
    request = infer_request(body(inputs=inputs, outputs=[{"name": "nope"}]), Signature())
    with pytest.raises(V2Error, match="unknown output 'nope'"):
        infer_answer(records, "m", "1", request, Signature())


def test_backend_errors_keep_mlflows_message():
    assert backend_error(b'{"error_code": "BAD_REQUEST", "message": "Invalid input. Column x"}') == \
        "Invalid input. Column x"
    assert backend_error(b"<html>oops</html>") == "<html>oops</html>"


def test_model_metadata_lists_inputs_and_outputs():
    meta = model_metadata("iris", ["Production"], COLUMNS)
    assert meta["name"] == "iris" and meta["platform"] == "mlflow" and meta["versions"] == ["Production"]
    assert meta["inputs"][0] == {"name": "sepal length (cm)", "datatype": "FP64", "shape": [-1, 1]}
    assert meta["outputs"] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]
    assert model_metadata("m", [], Signature())["outputs"] == [{"name": "predictions", "datatype": "BYTES",
                                                                "shape": [-1]}]
