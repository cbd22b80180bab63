"""Open Inference Protocol (KServe V2) REST bodies to and from what ``mlflow models serve``
takes and answers. Pure functions: no I/O, every problem a :class:`V2Error` with the status
the spec asks for (400 for a request that does not fit the model).

Request: V2 ``inputs`` (``name``, ``shape``, ``datatype``, row-major ``data``, flat or
nested) become ``dataframe_split`` for a column signature (one input per column) and
``inputs`` for a tensor signature (one unnamed tensor: the array itself; named tensors: a
mapping); V2 ``parameters`` become MLflow ``params`` when the signature declares params.

Answer: MLflow's ``predictions`` become V2 ``outputs``: a list of scalars or of rows is one
output (the output signature's name, else ``predictions``), a list of records or a mapping
of arrays is one output per name. Datatypes come from the output signature, else from the
values (all booleans BOOL, all integers INT64, numbers FP64, else BYTES).

Binary tensor data in requests (the spec's extension, what ``tritonclient`` sends by
default: ``Inference-Header-Content-Length`` bytes of JSON, then the tensors) is decoded;
answers are always JSON (``binary_data_output`` is ignored, which the spec allows: a client
reads JSON outputs as well).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from mlops_autoserve.modelmeta import Signature, TensorMeta

BINARY_HEADER = "Inference-Header-Content-Length"
INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
FLOAT_TYPES = {"FP16", "FP32", "FP64"}
DATATYPES = INT_TYPES | FLOAT_TYPES | {"BOOL", "BYTES"}
MAX_ELEMENTS = 10_000_000  # a shape claiming more is refused before anything is built


class V2Error(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InferRequest:
    """A translated request: the MLflow body, and what the V2 answer needs to echo."""

    body: bytes
    id: str | None
    outputs: tuple[str, ...]  # names the caller asked for ((): all)


# The binary tensor data extension: little-endian, row-major; BYTES elements are each a
# 4-byte little-endian length and the bytes.
BINARY_FORMATS = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H",
                  "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}


def _binary_values(name: str, datatype: str, count: int, raw: bytes) -> list:
    if datatype == "BYTES":
        values, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise V2Error(f"input {name!r}: binary BYTES data is cut off")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise V2Error(f"input {name!r}: binary BYTES data is cut off")
            values.append(raw[offset:offset + size].decode("utf-8", "replace"))
            offset += size
        return values
    code = BINARY_FORMATS[datatype]
    width = struct.calcsize(code)
    if len(raw) != count * width:
        raise V2Error(f"input {name!r}: {count} {datatype} values are {count * width} bytes, got {len(raw)}")
    values = list(struct.unpack(f"<{count}{code}", raw))
    return [float(v) if datatype.startswith("FP") else v for v in values]


def _with_binary(request: dict, binary: bytes) -> dict:
    """The inputs with ``binary_data_size`` get their ``data`` from the bytes after the JSON."""
    offset = 0
    for tensor in request.get("inputs") or []:
        if not isinstance(tensor, dict):
            continue
        size = (tensor.get("parameters") or {}).get("binary_data_size") if isinstance(
            tensor.get("parameters"), dict) else None
        if size is None:
            continue
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise V2Error(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} bytes sent")
        if datatype not in DATATYPES or not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
            raise V2Error(f"input {name!r}: binary data needs a datatype and a shape")
        if math.prod(shape) > MAX_ELEMENTS:
            raise V2Error(f"input {name!r}: shape {shape} holds more than {MAX_ELEMENTS:,} elements")
        tensor["data"] = _binary_values(str(name), datatype, math.prod(shape), binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise V2Error(f"{len(binary) - offset} bytes of binary data belong to no input")
    return request


def _load(body: bytes, header_length: int | None = None) -> dict:
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise V2Error(f"{BINARY_HEADER} {header_length} does not fit a body of {len(body)} bytes")
        request = _load(body[:header_length])
        return _with_binary(request, body[header_length:])
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise V2Error(f"the request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise V2Error("the request body must be a JSON object with an 'inputs' list")
    return data


def _flatten(data: Any) -> list:
    if not isinstance(data, list):
        return [data]
    if not any(type(d) is list for d in data):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _nest(flat: list, shape: list[int]) -> Any:
    """Row-major ``flat`` as nested lists of ``shape``."""
    if len(shape) <= 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i:i + step], shape[1:]) for i in range(0, len(flat), step)]


def _json_types(datatype: str) -> frozenset[type]:
    """The JSON value types a datatype's ``data`` may hold (``type(True)`` is bool, not int)."""
    if datatype in FLOAT_TYPES:
        return frozenset((int, float))
    if datatype in INT_TYPES:
        return frozenset((int,))
    return frozenset((bool,)) if datatype == "BOOL" else frozenset((str,))


def _check_values(name: str, datatype: str, values: list) -> None:
    allowed = _json_types(datatype)
    if all(type(v) in allowed for v in values):
        return
    wrong = next(v for v in values if type(v) not in allowed)
    raise V2Error(f"input {name!r} is {datatype} but holds {json.dumps(wrong)[:40]}")


@dataclass(frozen=True)
class _Input:
    name: str
    shape: list[int]
    datatype: str
    data: list  # flat, row-major


def _inputs(request: dict) -> list[_Input]:
    raw = request.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise V2Error("'inputs' must be a non-empty list of tensors")
    out, seen = [], set()
    for i, tensor in enumerate(raw):
        if not isinstance(tensor, dict):
            raise V2Error(f"inputs[{i}] must be an object with name, shape, datatype and data")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise V2Error(f"inputs[{i}] has no name")
        if name in seen:
            raise V2Error(f"input {name!r} is given twice")
        seen.add(name)
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise V2Error(f"input {name!r}: 'shape' must be a list of non-negative integers")
        if math.prod(shape) > MAX_ELEMENTS:
            raise V2Error(f"input {name!r}: shape {shape} holds more than {MAX_ELEMENTS:,} elements")
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise V2Error(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(sorted(DATATYPES))}")
        if "data" not in tensor:
            raise V2Error(f"input {name!r} has no 'data' (and no binary_data_size)")
        flat = _flatten(tensor["data"])
        if len(flat) != math.prod(shape):
            raise V2Error(f"input {name!r}: shape {shape} needs {math.prod(shape)} values, 'data' has {len(flat)}")
        _check_values(name, datatype, flat)
        out.append(_Input(name, shape, datatype, flat))
    return out


def _expect(given: _Input, declared: TensorMeta) -> None:
    if given.datatype != declared.datatype:
        raise V2Error(f"input {given.name!r} is {given.datatype}; the model takes {declared.datatype}")
    if declared.content_type == "json":
        return
    if len(given.shape) != len(declared.shape) and declared.shape != (-1, 1):
        raise V2Error(f"input {given.name!r} has shape {given.shape}; the model takes {list(declared.shape)}")
    for got, want in zip(given.shape, declared.shape, strict=False):
        if want != -1 and got != want:
            raise V2Error(f"input {given.name!r} has shape {given.shape}; the model takes {list(declared.shape)}")


def _columns(inputs: list[_Input], signature: Signature) -> dict:
    """One input per column, each of shape [N] or [N, 1]: a ``dataframe_split``."""
    rows = None
    for given in inputs:
        if len(given.shape) not in (1, 2) or (len(given.shape) == 2 and given.shape[1] != 1):
            raise V2Error(f"input {given.name!r} has shape {given.shape}: a column is [N] or [N, 1]")
        if rows is not None and given.shape[0] != rows:
            raise V2Error(f"inputs have different numbers of rows ({rows} and {given.shape[0]} in {given.name!r})")
        rows = given.shape[0]
    by_name = {i.name: i for i in inputs}
    if signature.kind == "columns":
        names = [t.name for t in signature.inputs]
        unknown = [n for n in by_name if signature.input(n) is None]
        if unknown:
            raise V2Error(f"unknown input {unknown[0]!r}; the model takes {', '.join(repr(n) for n in names)}")
        missing = [t.name for t in signature.inputs if t.name not in by_name and not t.optional]
        if missing:
            raise V2Error(f"missing input {missing[0]!r}; the model takes {', '.join(repr(n) for n in names)}")
        for given in inputs:
            _expect(given, signature.input(given.name))
        columns = [n for n in names if n in by_name]
    else:
        columns = [i.name for i in inputs]
    data = [list(row) for row in zip(*(by_name[c].data for c in columns), strict=True)]
    return {"dataframe_split": {"columns": columns, "data": data}}


def _tensors(inputs: list[_Input], signature: Signature) -> dict:
    names = [t.name for t in signature.inputs]
    for given in inputs:
        declared = signature.input(given.name)
        if declared is None:
            raise V2Error(f"unknown input {given.name!r}; the model takes {', '.join(repr(n) for n in names)}")
        _expect(given, declared)
    missing = [n for n in names if n not in {i.name for i in inputs}]
    if missing:
        raise V2Error(f"missing input {missing[0]!r}; the model takes {', '.join(repr(n) for n in names)}")
    if len(signature.inputs) == 1 and signature.inputs[0].name == "input-0":  # one unnamed tensor
        return {"inputs": _nest(inputs[0].data, inputs[0].shape)}
    return {"inputs": {i.name: _nest(i.data, i.shape) for i in inputs}}


def infer_request(body: bytes, signature: Signature, header_length: int | None = None) -> InferRequest:
    """The MLflow request for a V2 infer body; V2Error (400) when it does not fit the model.
    ``header_length``: the ``Inference-Header-Content-Length`` of a body with binary tensors."""
    request = _load(body, header_length)
    inputs = _inputs(request)
    if signature.kind == "tensors":
        mlflow_request = _tensors(inputs, signature)
    elif signature.kind == "none" and len(inputs) == 1 and len(inputs[0].shape) >= 2 and inputs[0].shape[1] != 1:
        mlflow_request = {"inputs": _nest(inputs[0].data, inputs[0].shape)}  # one tensor, no signature to say more
    else:
        mlflow_request = _columns(inputs, signature)
    parameters = request.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise V2Error("'parameters' must be an object")
    if parameters and signature.params:
        mlflow_request["params"] = {k: v for k, v in parameters.items() if k in signature.params}
    wanted = request.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                               for o in wanted):
        raise V2Error("'outputs' must be a list of objects with a name")
    request_id = request.get("id")
    return InferRequest(json.dumps(mlflow_request).encode(), None if request_id is None else str(request_id),
                        tuple(o["name"] for o in wanted))


# -- answers -------------------------------------------------------------------------------
def _datatype_of(values: list) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return "BOOL"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"


def _shape_of(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _output(name: str, value: Any, declared: TensorMeta | None) -> dict:
    flat = _flatten(value) if isinstance(value, list) else [value]
    shape = _shape_of(value) if isinstance(value, list) else [1]
    datatype = declared.datatype if declared is not None else _datatype_of(flat)
    if datatype == "BYTES":
        flat = [v if isinstance(v, str) else json.dumps(v) for v in flat]
    return {"name": name, "shape": shape, "datatype": datatype, "data": flat}


def infer_answer(answer: bytes, model: str, version: str, request: InferRequest, signature: Signature) -> dict:
    """The V2 answer for MLflow's 200 answer ``{"predictions": ...}``."""
    try:
        data = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        raise V2Error("the model server's answer is not JSON", 502) from None
    predictions = data.get("predictions", data) if isinstance(data, dict) else data
    declared = {t.name: t for t in signature.outputs}
    if isinstance(predictions, dict):  # named tensors
        outputs = [_output(k, v, declared.get(k)) for k, v in predictions.items()]
    elif isinstance(predictions, list) and predictions and all(isinstance(p, dict) for p in predictions):
        names = list(dict.fromkeys(k for p in predictions for k in p))  # a DataFrame: one output per column
        outputs = [_output(k, [p.get(k) for p in predictions], declared.get(k)) for k in names]
    else:
        only = signature.outputs[0] if len(signature.outputs) == 1 else None
        name = only.name if only is not None and not only.name.isdigit() else "predictions"
        outputs = [_output(name, predictions, only)]
    if request.outputs:
        known = {o["name"]: o for o in outputs}
        unknown = [n for n in request.outputs if n not in known]
        if unknown:
            raise V2Error(f"unknown output {unknown[0]!r}; the model gives {', '.join(repr(n) for n in known)}")
        outputs = [known[n] for n in request.outputs]
    out: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        out["id"] = request.id
    out["outputs"] = outputs
    return out


def backend_error(answer: bytes) -> str:
    """The message of an MLflow error answer (``{"error_code", "message"}``), or its first bytes."""
    try:
        data = json.loads(answer)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"][:2000]
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return data["error"][:2000]
    except (ValueError, UnicodeDecodeError):
        pass
    return answer[:300].decode("utf-8", "replace")


def model_metadata(model: str, versions: list[str], signature: Signature) -> dict:
    """``GET /v2/models/{model}[/versions/{alias}]``."""
    inputs = [t.to_v2() for t in signature.inputs]
    outputs = [t.to_v2() for t in signature.outputs] or [{"name": "predictions", "datatype": "BYTES", "shape": [-1]}]
    return {"name": model, "versions": versions, "platform": "mlflow", "inputs": inputs, "outputs": outputs}
