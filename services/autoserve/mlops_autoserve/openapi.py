"""An OpenAPI 3.1 document for one served route, from its version's MLflow signature and
logged input example: the real column names and types in every request body MLflow's
scoring server takes (``dataframe_split``, ``dataframe_records``, ``inputs``) and in the V2
``infer`` body, the answers, the error shape. Pure: built from :class:`modelmeta.VersionMetadata`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from mlops_autoserve.modelmeta import Signature, VersionMetadata
from mlops_autoserve.v2protocol import DATATYPES, model_metadata

JSON = "application/json"
COLUMN_JSON_TYPES = {"BOOL": {"type": "boolean"}, "INT32": {"type": "integer"}, "INT64": {"type": "integer"},
                     "FP32": {"type": "number"}, "FP64": {"type": "number"}, "BYTES": {"type": "string"}}
ERRORS = {"400": "The request does not fit the model", "401": "Missing or wrong bearer token",
          "404": "No such model or alias", "413": "Request body too large", "429": "Too many requests in flight",
          "502": "The model server failed", "503": "Not ready (the reason is in the body)",
          "504": "The model server did not answer in time"}


def _value_schema(datatype: str, content_type: str | None) -> dict[str, Any]:
    if content_type == "datetime":
        return {"type": "string", "format": "date-time"}
    if content_type == "json":
        return {}
    return dict(COLUMN_JSON_TYPES.get(datatype, {}))


def _nested(shape: tuple[int, ...], item: dict[str, Any]) -> dict[str, Any]:
    schema = item
    for _ in shape:
        schema = {"type": "array", "items": schema}
    return schema


def _request_schemas(signature: Signature) -> dict[str, Any]:
    if signature.kind == "tensors":
        if len(signature.inputs) == 1 and signature.inputs[0].name == "input-0":
            only = signature.inputs[0]
            inputs = _nested(only.shape, _value_schema(only.datatype, only.content_type))
        else:
            inputs = {"type": "object", "required": [t.name for t in signature.inputs],
                      "properties": {t.name: _nested(t.shape, _value_schema(t.datatype, t.content_type))
                                     for t in signature.inputs}}
        return {"TensorInputs": {"type": "object", "required": ["inputs"], "properties": {"inputs": inputs}}}
    columns = [t.name for t in signature.inputs]
    cell = {"anyOf": [_value_schema(t.datatype, t.content_type) or {} for t in signature.inputs]} \
        if signature.inputs else {}
    split = {"type": "object", "required": ["columns", "data"], "properties": {
        "columns": {"type": "array", "items": {"enum": columns} if columns else {"type": "string"}},
        "data": {"type": "array", "items": {"type": "array", "items": cell}}}}
    record = {"type": "object", "properties": {t.name: _value_schema(t.datatype, t.content_type)
                                               for t in signature.inputs},
              "required": [t.name for t in signature.inputs if not t.optional]}
    return {
        "DataframeSplit": {"type": "object", "required": ["dataframe_split"],
                           "properties": {"dataframe_split": split}},
        "DataframeRecords": {"type": "object", "required": ["dataframe_records"],
                             "properties": {"dataframe_records": {"type": "array", "items": record}}},
    }


def _v2_infer_schema(signature: Signature) -> dict[str, Any]:
    names = [t.name for t in signature.inputs]
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"enum": names} if names else {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": sorted(DATATYPES)},
        "data": {"type": "array"},
        "parameters": {"type": "object"}}}
    return {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": tensor},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}}}}}}


def _v2_example(example: Any, signature: Signature) -> dict[str, Any] | None:
    """The logged example as a V2 infer body (column models: one input per column)."""
    if not isinstance(example, dict) or signature.kind != "columns":
        return None
    split = example.get("dataframe_split")
    if not isinstance(split, dict) or not isinstance(split.get("data"), list):
        return None
    columns, rows = split.get("columns") or [], split["data"]
    types = {t.name: t.datatype for t in signature.inputs}
    return {"inputs": [{"name": c, "shape": [len(rows), 1], "datatype": types.get(c, "BYTES"),
                        "data": [row[i] for row in rows]} for i, c in enumerate(columns)]}


def _errors() -> dict[str, Any]:
    return {code: {"description": text, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for code, text in ERRORS.items()}


def document(model: str, alias: str, metadata: VersionMetadata | None, version: int | None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``model@alias`` (``metadata`` None: not published yet,
    the bodies then say only what every MLflow model takes)."""
    signature = metadata.parsed if metadata is not None else Signature()
    example = metadata.input_example if metadata is not None else None
    base = f"/serve/{quote(model, safe='')}/{quote(alias, safe='')}"
    v2 = f"/v2/models/{quote(model, safe='')}/versions/{quote(alias, safe='')}"
    schemas = _request_schemas(signature)
    request_refs = [{"$ref": f"#/components/schemas/{name}"} for name in schemas]
    invocation_examples = {"logged": {"summary": "The example logged with the model", "value": example}} \
        if example is not None else {}
    v2_example = _v2_example(example, signature)
    v2_examples = {"logged": {"summary": "The logged example, as V2 tensors", "value": v2_example}} \
        if v2_example is not None else {}
    metadata_schema = model_metadata(model, [alias], signature)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{model}@{alias}", "version": str(version or "none"),
                 "description": f"Predictions from version {version} of the registered model {model!r}, "
                                f"served under the alias {alias!r} (mlops-toolkit gateway)."},
        "paths": {
            f"{base}/invocations": {"post": {
                "summary": f"Predict with {model}@{alias} (MLflow's scoring protocol)",
                "operationId": "invocations",
                "requestBody": {"required": True, "content": {JSON: {
                    "schema": {"oneOf": request_refs} if len(request_refs) > 1 else request_refs[0],
                    **({"examples": invocation_examples} if invocation_examples else {})}}},
                "responses": {"200": {"description": "Predictions; X-Model-Version says which version answered",
                                      "headers": {"X-Model-Version": {"schema": {"type": "string"}}},
                                      "content": {JSON: {"schema": {"$ref": "#/components/schemas/Predictions"}}}},
                              **_errors()}}},
            f"{base}/ping": {"get": {"summary": "Is a replica of the route ready?", "operationId": "ping",
                                     "responses": {"200": {"description": "Ready"}, **_errors()}}},
            f"{base}/metadata": {"get": {
                "summary": "The version's signature, example, flavors, requirements and data contract",
                "operationId": "metadata",
                "responses": {"200": {"description": "Metadata", "content": {JSON: {"schema": {"type": "object"}}}},
                              **_errors()}}},
            f"{v2}/infer": {"post": {
                "summary": f"Predict with {model}@{alias} (Open Inference Protocol, V2)",
                "operationId": "v2_infer",
                "requestBody": {"required": True, "content": {JSON: {
                    "schema": {"$ref": "#/components/schemas/V2InferRequest"},
                    **({"examples": v2_examples} if v2_examples else {})}}},
                "responses": {"200": {"description": "V2 outputs",
                                      "content": {JSON: {"schema": {"$ref": "#/components/schemas/V2InferResponse"}}}},
                              **_errors()}}},
            v2: {"get": {"summary": "V2 model metadata", "operationId": "v2_metadata",
                         "responses": {"200": {"description": "Inputs and outputs", "content": {JSON: {
                             "schema": {"type": "object"}, "example": metadata_schema}}}, **_errors()}}},
        },
        "components": {"schemas": {
            **schemas,
            "Predictions": {"type": "object", "required": ["predictions"], "properties": {"predictions": {}}},
            "V2InferRequest": _v2_infer_schema(signature),
            "V2InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string"}, "data": {"type": "array"}}}}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        }},
    }


def document_json(model: str, alias: str, metadata: VersionMetadata | None, version: int | None) -> bytes:
    return json.dumps(document(model, alias, metadata, version)).encode()
