"""The OpenAPI document of a served route, from real MLflow signatures, checked by a real
validator (openapi-spec-validator) and read as a developer would: the real column names
and types, the logged example in both protocols."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlops_autoserve.modelmeta import VersionMetadata
from mlops_autoserve.openapi import document
from openapi_spec_validator import validate

IRIS = pd.DataFrame({"sepal length (cm)": [5.1, 6.2], "petal width (cm)": [0.2, 1.3], "n": [1, 2],
                     "when": pd.to_datetime(["2026-01-01", "2026-02-01"])})
EXAMPLE = {"dataframe_split": {"columns": ["sepal length (cm)", "petal width (cm)", "n", "when"],
                               "data": [[5.1, 0.2, 1, "2026-01-01T00:00:00"]]}}


def columns_metadata() -> VersionMetadata:
    return VersionMetadata("iris serve.x", 3, "run", ("python_function", "sklearn"),
                           infer_signature(IRIS, np.array([0, 1])).to_dict(), EXAMPLE)


def test_a_column_models_document_is_valid_openapi_with_its_columns_types_and_example():
    doc = document("iris serve.x", "Production", columns_metadata(), 3)
    validate(doc)
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"] == "3"
    paths = doc["paths"]
    assert set(paths) == {"/serve/iris%20serve.x/Production/invocations", "/serve/iris%20serve.x/Production/ping",
                          "/serve/iris%20serve.x/Production/metadata",
                          "/v2/models/iris%20serve.x/versions/Production/infer",
                          "/v2/models/iris%20serve.x/versions/Production"}
    schemas = doc["components"]["schemas"]
    record = schemas["DataframeRecords"]["properties"]["dataframe_records"]["items"]["properties"]
    assert record == {"sepal length (cm)": {"type": "number"}, "petal width (cm)": {"type": "number"},
                      "n": {"type": "integer"}, "when": {"type": "string", "format": "date-time"}}
    assert schemas["DataframeSplit"]["properties"]["dataframe_split"]["properties"]["columns"]["items"]["enum"] == [
        "sepal length (cm)", "petal width (cm)", "n", "when"]
    body = paths["/serve/iris%20serve.x/Production/invocations"]["post"]["requestBody"]["content"]["application/json"]
    assert body["examples"]["logged"]["value"] == EXAMPLE
    v2 = paths["/v2/models/iris%20serve.x/versions/Production/infer"]["post"]["requestBody"]["content"][
        "application/json"]
    assert v2["examples"]["logged"]["value"]["inputs"][2] == {"name": "n", "shape": [1, 1], "datatype": "INT64",
                                                              "data": [1]}
    assert set(doc["paths"]["/serve/iris%20serve.x/Production/ping"]["get"]["responses"]) >= {"200", "404", "503"}


@pytest.mark.parametrize("signature", [
    infer_signature(np.zeros((2, 4)), np.zeros(2)).to_dict(),
    None,
])
def test_tensor_and_unsigned_models_get_valid_documents_too(signature):
    meta = VersionMetadata("m", 1, signature=signature)
    doc = document("m", "a", meta, 1)
    validate(doc)
    if signature is not None:
        inputs = doc["components"]["schemas"]["TensorInputs"]["properties"]["inputs"]
        assert inputs == {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    validate(document("m", "a", None, None))  # metadata not published yet
