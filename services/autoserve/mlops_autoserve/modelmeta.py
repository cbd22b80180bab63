"""What a served model version takes and gives, from its MLflow signature, in the Open
Inference Protocol's (KServe V2) terms.

The watcher writes one metadata file per version it serves (:func:`metadata_path`; fetched
once, by :mod:`watcher.metadata`); the gateway reads it to answer V2 metadata requests and
to translate V2 inference requests (:mod:`v2protocol`). Nothing here touches the registry.

MLflow types to V2 datatypes: boolean BOOL, integer INT32, long INT64, float FP32, double
FP64, string and binary BYTES, datetime BYTES (``content_type`` parameter ``datetime``);
tensor dtypes by their numpy names. A column signature is one V2 input per column, shape
``[-1, 1]``; a tensor signature keeps its names (``input-0``... when unnamed) and shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

METADATA_DIR = "metadata"  # <state_dir>/metadata/<model>/<version>.json
METADATA_FORMAT = "mlops-autoserve/model-metadata/v1"
MAX_METADATA_BYTES = 1024 * 1024  # a larger file (a huge input example) is not read

COLUMN_TYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}
TENSOR_TYPES = {"bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
                "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                "float16": "FP16", "float32": "FP32", "float64": "FP64", "str": "BYTES", "bytes": "BYTES",
                "object": "BYTES"}


@dataclass(frozen=True)
class TensorMeta:
    """One V2 input or output: its name, datatype and shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False
    content_type: str | None = None  # "datetime" for MLflow datetime columns, "json" for arrays and objects

    def to_v2(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
        if self.content_type or self.optional:
            out["parameters"] = {k: v for k, v in (("content_type", self.content_type),
                                                   ("optional", self.optional or None)) if v}
        return out


@dataclass(frozen=True)
class Signature:
    """``kind``: "columns" (a DataFrame model), "tensors" (numpy arrays) or "none" (logged without one)."""

    kind: str = "none"
    inputs: tuple[TensorMeta, ...] = ()
    outputs: tuple[TensorMeta, ...] = ()
    params: tuple[str, ...] = ()  # names of the inference params the model takes

    def input(self, name: str) -> TensorMeta | None:
        return next((t for t in self.inputs if t.name == name), None)


def _column(spec: dict, index: int) -> TensorMeta:
    kind = str(spec.get("type", ""))
    name = str(spec.get("name") if spec.get("name") is not None else index)
    if kind in COLUMN_TYPES:
        return TensorMeta(name, COLUMN_TYPES[kind], (-1, 1), not spec.get("required", True),
                          "datetime" if kind == "datetime" else None)
    # Arrays, objects and maps (MLflow 2.10+): JSON values in a BYTES tensor.
    return TensorMeta(name, "BYTES", (-1, 1), not spec.get("required", True), "json")


def _tensor(spec: dict, index: int, prefix: str) -> TensorMeta:
    tensor = spec.get("tensor-spec") or {}
    dtype = str(tensor.get("dtype", "object"))
    shape = tuple(int(d) for d in tensor.get("shape") or (-1,))
    name = str(spec["name"]) if spec.get("name") else f"{prefix}-{index}"
    return TensorMeta(name, TENSOR_TYPES.get(dtype, "BYTES"), shape)


def _schema(text: Any, prefix: str) -> tuple[str, tuple[TensorMeta, ...]]:
    """(kind, tensors) of one MLflow schema: the JSON text MLmodel holds, or its list."""
    specs = json.loads(text) if isinstance(text, str) else text
    if not isinstance(specs, list) or not specs:
        return "none", ()
    specs = [s for s in specs if isinstance(s, dict)]
    if specs and all(s.get("type") == "tensor" for s in specs):
        return "tensors", tuple(_tensor(s, i, prefix) for i, s in enumerate(specs))
    return "columns", tuple(_column(s, i) for i, s in enumerate(specs))


def parse_signature(signature: dict | None) -> Signature:
    """From the ``signature`` mapping of an MLmodel file (its values are JSON text); a
    missing or unreadable one is ``kind="none"``."""
    if not isinstance(signature, dict):
        return Signature()
    try:
        kind, inputs = _schema(signature.get("inputs"), "input")
        _, outputs = _schema(signature.get("outputs"), "output")
        params_text = signature.get("params")
        params = json.loads(params_text) if isinstance(params_text, str) else (params_text or [])
        names = tuple(str(p["name"]) for p in params if isinstance(p, dict) and "name" in p)
    except (ValueError, TypeError, KeyError):
        return Signature()
    return Signature(kind, inputs, outputs, names)


@dataclass(frozen=True)
class VersionMetadata:
    """What the watcher publishes for one served version."""

    model: str
    version: int
    run_id: str | None = None
    flavors: tuple[str, ...] = ()
    signature: dict | None = None  # as MLmodel has it
    input_example: Any = None  # the logged serving example (an MLflow request body), or None
    requirements: tuple[str, ...] = ()
    data_contract: dict | None = None

    @cached_property
    def parsed(self) -> Signature:
        return parse_signature(self.signature)

    def to_json(self) -> dict[str, Any]:
        return {"format": METADATA_FORMAT, "model": self.model, "version": self.version, "run_id": self.run_id,
                "flavors": list(self.flavors), "signature": self.signature, "input_example": self.input_example,
                "requirements": list(self.requirements), "data_contract": self.data_contract}

    @classmethod
    def from_json(cls, data: dict) -> VersionMetadata:
        if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
            raise ValueError("not a model metadata file")
        signature = data.get("signature") if isinstance(data.get("signature"), dict) else None
        return cls(str(data["model"]), int(data["version"]), data.get("run_id"),
                   tuple(str(f) for f in data.get("flavors") or ()), signature, data.get("input_example"),
                   tuple(str(r) for r in data.get("requirements") or ()),
                   data.get("data_contract") if isinstance(data.get("data_contract"), dict) else None)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def metadata_path(state_dir: Path, model: str, version: int) -> Path:
    """``<state_dir>/metadata/<model, path-safe>/<version>.json``; a model name never makes a path."""
    safe = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", model)
    if safe in ("", ".", ".."):
        safe = safe.replace(".", "%2E") or "%00"
    return Path(state_dir) / METADATA_DIR / safe / f"{int(version)}.json"


def write_metadata(state_dir: Path, metadata: VersionMetadata) -> Path:
    path = metadata_path(state_dir, metadata.model, metadata.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(metadata.to_json()))
    partial.replace(path)
    return path


def read_metadata(state_dir: Path, model: str, version: int) -> VersionMetadata | None:
    """The version's metadata, or None when the watcher has not written it (or it is unreadable)."""
    path = metadata_path(state_dir, model, version)
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            return None
        return VersionMetadata.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
