"""Model metadata from real MLflow signatures (``infer_signature`` of real data, as ``log_model``
writes them into MLmodel), and the metadata files the watcher writes for the gateway."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlops_autoserve.modelmeta import (
    MAX_METADATA_BYTES,
    TensorMeta,
    VersionMetadata,
    metadata_path,
    parse_signature,
    read_metadata,
    write_metadata,
)

IRIS = pd.DataFrame({"sepal length (cm)": [5.1, 6.2], "petal width (cm)": [0.2, 1.8]})


def test_a_dataframe_signature_is_one_v2_input_per_column_with_mlflow_types_mapped():
    signature = infer_signature(IRIS.assign(n=[1, 2], flag=[True, False], name=["a", "b"]), np.array([0, 2]))
    parsed = parse_signature(signature.to_dict())
    assert parsed.kind == "columns"
    assert parsed.inputs == (
        TensorMeta("sepal length (cm)", "FP64", (-1, 1)), TensorMeta("petal width (cm)", "FP64", (-1, 1)),
        TensorMeta("n", "INT64", (-1, 1)), TensorMeta("flag", "BOOL", (-1, 1)), TensorMeta("name", "BYTES", (-1, 1)))
    assert parsed.outputs == (TensorMeta("output-0", "INT64", (-1,)),)


def test_a_tensor_signature_keeps_its_shapes_and_names_unnamed_tensors():
    signature = infer_signature(np.zeros((2, 4), dtype=np.float32), np.zeros(2))
    parsed = parse_signature(signature.to_dict())
    assert parsed.kind == "tensors"
    assert parsed.inputs == (TensorMeta("input-0", "FP32", (-1, 4)),)
    assert parsed.outputs == (TensorMeta("output-0", "FP64", (-1,)),)
    named = ModelSignature(inputs=Schema([TensorSpec(np.dtype("int32"), (-1, 3), "pixels"),
                                          TensorSpec(np.dtype("uint8"), (-1,), "mask")]))
    assert parse_signature(named.to_dict()).inputs == (TensorMeta("pixels", "INT32", (-1, 3)),
                                                       TensorMeta("mask", "UINT8", (-1,)))


def test_optional_columns_datetimes_integers_and_params():
    signature = ModelSignature(
        inputs=Schema([ColSpec("integer", "a"), ColSpec("float", "b", required=False), ColSpec("datetime", "when")]),
        params=ParamSchema([ParamSpec("temperature", "double", 0.5)]))
    parsed = parse_signature(signature.to_dict())
    assert parsed.inputs == (TensorMeta("a", "INT32", (-1, 1)), TensorMeta("b", "FP32", (-1, 1), optional=True),
                             TensorMeta("when", "BYTES", (-1, 1), content_type="datetime"))
    assert parsed.params == ("temperature",)
    assert parsed.inputs[2].to_v2() == {"name": "when", "datatype": "BYTES", "shape": [-1, 1],
                                        "parameters": {"content_type": "datetime"}}


def test_no_signature_or_a_broken_one_is_kind_none():
    assert parse_signature(None).kind == "none"
    assert parse_signature({"inputs": "not json"}).kind == "none"
    assert parse_signature({"inputs": json.dumps({"a": 1})}).kind == "none"


def test_metadata_files_round_trip_and_a_model_name_never_makes_a_path(tmp_path):
    signature = infer_signature(IRIS, np.array([0, 2])).to_dict()
    meta = VersionMetadata("../../etc/iris model", 3, "run1", ("python_function", "sklearn"), signature,
                           {"dataframe_split": {"columns": list(IRIS.columns), "data": IRIS.values.tolist()}},
                           ("scikit-learn==1.5.0",), {"columns": []})
    path = write_metadata(tmp_path, meta)
    assert path.parent.parent == tmp_path / "metadata" and path.name == "3.json"
    assert metadata_path(tmp_path, "..", 1).parent.name not in ("", ".", "..")
    back = read_metadata(tmp_path, "../../etc/iris model", 3)
    assert back == meta and back.parsed.kind == "columns"
    assert read_metadata(tmp_path, "../../etc/iris model", 4) is None


def test_an_unreadable_or_oversized_metadata_file_is_no_metadata(tmp_path):
    path = metadata_path(tmp_path, "m", 1)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert read_metadata(tmp_path, "m", 1) is None
    path.write_text(json.dumps({"format": "something else"}))
    assert read_metadata(tmp_path, "m", 1) is None
    meta = VersionMetadata("m", 1, input_example="x" * MAX_METADATA_BYTES)
    write_metadata(tmp_path, meta)
    assert read_metadata(tmp_path, "m", 1) is None
