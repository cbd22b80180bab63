"""Merging small scoring requests into one and splitting the answer back, exactly.

Pure: bytes in, bytes out; the gateway's batcher decides when to use it. A request can be
merged only with requests of the same *shape* (:attr:`Part.key`): the same format, the same
columns in the same order with the same JSON types, rows of the same structure. Anything
else goes alone (:func:`parse` answers None): ``params``, a DataFrame ``index``, mixed
types within a column, ragged tensors, CSV with quotes, an unknown format, a body over
``MAX_PART_BYTES``.

The split is checked, never assumed (:func:`split`): the answer must be MLflow's
``{"predictions": ...}`` (or a bare list) holding exactly one prediction per row sent,
a list of rows, or a mapping of such lists; anything else is None, and the caller
re-sends the requests one by one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_PART_BYTES = 1024 * 1024  # a larger request is worth a request of its own
JSON_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


@dataclass(frozen=True)
class Part:
    """One request, parsed: what it can be merged with, its rows, how to write them."""

    key: tuple
    rows: int
    payload: Any  # the rows (a list), or for a mapping of tensors {name: list}; CSV: the data lines


def _kind(value: Any) -> str:
    """A JSON value's type as merging sees it (an int and a float column do not mix)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"list{len(value)}:" + ",".join(sorted({_kind(v) for v in value}))
    return "other"


def _column_kinds(rows: list[list]) -> tuple[str, ...] | None:
    """Each column's one kind across the rows; None when a column mixes kinds or rows differ in length."""
    if not rows or not all(isinstance(r, list) for r in rows):
        return None
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        return None
    kinds = []
    for column in zip(*rows, strict=True):
        found = {_kind(v) for v in column}
        if len(found) != 1:
            return None
        kinds.append(found.pop())
    return tuple(kinds)


def _tensor_rows(rows: Any) -> tuple[str, ...] | None:
    """A list of rows of one structure (scalars of one kind, or lists of one length and kind)."""
    if not isinstance(rows, list) or not rows:
        return None
    kinds = {_kind(r) for r in rows}
    return tuple(kinds) if len(kinds) == 1 and "other" not in kinds else None


def parse(body: bytes, content_type: str | None) -> Part | None:
    """The request as a mergeable part, or None: it goes alone."""
    if len(body) > MAX_PART_BYTES:
        return None
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind == "text/csv":
        return _csv(body)
    if kind != "application/json":
        return None
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request, dict) or len(request) != 1:  # params, index or two formats: alone
        return None
    (name, value), = request.items()
    if name == "dataframe_split":
        if not isinstance(value, dict) or set(value) != {"columns", "data"} or not isinstance(value["columns"], list):
            return None
        rows = value["data"]
        kinds = _column_kinds(rows)
        if kinds is None or len(kinds) != len(value["columns"]):
            return None
        return Part(("dataframe_split", tuple(map(str, value["columns"])), kinds), len(rows), rows)
    if name == "dataframe_records":
        if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
            return None
        columns = tuple(value[0])
        if any(tuple(r) != columns for r in value):
            return None
        kinds = _column_kinds([list(r.values()) for r in value])
        return Part(("dataframe_records", columns, kinds), len(value), value) if kinds is not None else None
    if name in ("inputs", "instances"):
        if isinstance(value, dict):  # named tensors: equal-length lists
            if not value or not all(isinstance(v, list) for v in value.values()):
                return None
            lengths = {len(v) for v in value.values()}
            structure = tuple((k, _tensor_rows(v)) for k, v in value.items())
            if len(lengths) != 1 or any(s is None for _, s in structure):
                return None
            return Part((name, "named", structure), lengths.pop(), value)
        structure = _tensor_rows(value)
        return Part((name, "list", structure), len(value), value) if structure is not None else None
    return None


def _csv(body: bytes) -> Part | None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if '"' in text or "\r" in text:  # quoted fields may hold line breaks: not split by line here
        return None
    lines = text.rstrip("\n").split("\n")
    if len(lines) < 2 or any(not line for line in lines):
        return None
    header, rows = lines[0], lines[1:]
    width = header.count(",")
    if any(row.count(",") != width for row in rows):
        return None
    return Part(("csv", header), len(rows), rows)


def merge(parts: list[Part]) -> tuple[bytes, str]:
    """One request holding every part's rows in order, and its content type (parts share a key)."""
    key = parts[0].key
    if any(p.key != key for p in parts):
        raise ValueError("parts of different shapes cannot be merged")
    fmt = key[0]
    if fmt == "csv":
        return ("\n".join([key[1], *(row for p in parts for row in p.payload)]) + "\n").encode(), "text/csv"
    if fmt == "dataframe_split":
        request = {fmt: {"columns": list(key[1]), "data": [row for p in parts for row in p.payload]}}
    elif key[1] == "named":
        request = {fmt: {name: [v for p in parts for v in p.payload[name]] for name, _ in key[2]}}
    else:
        request = {fmt: [row for p in parts for row in p.payload]}
    return json.dumps(request).encode(), "application/json"


def _slices(values: list, counts: list[int]) -> list[list]:
    out, start = [], 0
    for count in counts:
        out.append(values[start:start + count])
        start += count
    return out


def split(answer: bytes, counts: list[int]) -> list[bytes] | None:
    """Each part's own answer, in order; None when the answer is not one prediction per row."""
    try:
        data = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        return None
    total = sum(counts)
    wrapped = isinstance(data, dict)
    if wrapped and set(data) != {"predictions"}:
        return None
    predictions = data["predictions"] if wrapped else data
    if isinstance(predictions, list):
        if len(predictions) != total:
            return None
        pieces = _slices(predictions, counts)
    elif isinstance(predictions, dict) and predictions:
        if not all(isinstance(v, list) and len(v) == total for v in predictions.values()):
            return None  # per-column outputs that are not one value per row
        columns = {k: _slices(v, counts) for k, v in predictions.items()}
        pieces = [{k: columns[k][i] for k in predictions} for i in range(len(counts))]
    else:
        return None  # a scalar, a string: nothing to split by row
    return [json.dumps({"predictions": p} if wrapped else p).encode() for p in pieces]
