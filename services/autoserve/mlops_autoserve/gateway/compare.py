"""Comparing a shadow's answer with the answer the caller got: pure functions, no I/O.

``mlflow models serve`` answers ``{"predictions": [...]}`` (a list of labels or numbers, a
list of rows, or a dict of columns). Both answers are flattened to scalars in order; then

* classification (labels: ints, strings, bools): how many positions are equal;
* regression (any float that is not a whole number): the sum of absolute differences.

``auto`` picks classification when every value of both answers is a label.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Comparison:
    kind: str  # classification | regression | mismatch
    rows: int  # values compared
    agree: int = 0  # classification: equal values
    abs_diff_sum: float = 0.0  # regression: sum of |primary - shadow| over the pairs where both are finite
    nonfinite: int = 0  # regression: pairs where either answer is NaN or inf (a disagreement, never a pass)


def compare(primary: bytes, shadow: bytes, mode: str = "auto") -> Comparison:
    """Compare two prediction bodies; ``mismatch`` when they cannot be lined up."""
    try:
        left, right = _flat(_predictions(json.loads(primary))), _flat(_predictions(json.loads(shadow)))
    except (ValueError, TypeError):
        return Comparison("mismatch", 0)
    if len(left) != len(right) or not left:
        return Comparison("mismatch", 0)
    kind = mode if mode != "auto" else ("classification" if all(map(_is_label, left + right)) else "regression")
    if kind == "classification":
        return Comparison(kind, len(left), agree=sum(1 for a, b in zip(left, right, strict=True) if a == b))
    try:
        pairs = [(float(a), float(b)) for a, b in zip(left, right, strict=True)]
    except (TypeError, ValueError):
        return Comparison("mismatch", 0)
    finite = [abs(a - b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    return Comparison(kind, len(left), abs_diff_sum=sum(finite), nonfinite=len(pairs) - len(finite))


def _predictions(body: Any) -> Any:
    return body.get("predictions", body) if isinstance(body, dict) else body


def _flat(value: Any) -> list:
    if isinstance(value, dict):  # columns: {"a": [..], "b": [..]} in column order
        return [x for column in value.values() for x in _flat(column)]
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [value]


def _is_label(value: Any) -> bool:
    if isinstance(value, bool | str | int):
        return True
    return isinstance(value, float) and value.is_integer()
