"""Logged live requests read back as feature rows, for drift on what callers really send.

The gateway logs request bodies as they came (``mlops gateway --payload-log-rate``). A body
is one of the inputs ``mlflow models serve`` accepts (https://mlflow.org/docs/latest/ml/deployment/deploy-model-locally/):

* ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``
* ``{"dataframe_records": [{"col": value, ...}, ...]}``
* ``{"instances": ...}`` or ``{"inputs": ...}``: a list of records, a dict of columns, or a
  list of rows (named by ``columns``, the reference's columns, when the widths match).

A body that is none of these is skipped and counted, never an error: one odd caller must
not stop the drift check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class LiveInputs:
    frame: pd.DataFrame
    requests: int  # bodies read
    skipped: int  # bodies that were not a known input format


def live_inputs(bodies: list[str], columns: list[str] | None = None) -> LiveInputs:
    """Every row of every readable body, in one frame (columns: the union of what was sent)."""
    frames, skipped = [], 0
    for body in bodies:
        frame = _rows(body, columns)
        if frame is None or frame.empty:
            skipped += 1
        else:
            frames.append(frame)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return LiveInputs(frame, len(bodies), skipped)


def _rows(body: str, columns: list[str] | None) -> pd.DataFrame | None:
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        if "dataframe_split" in data:
            split = data["dataframe_split"]
            return pd.DataFrame(split["data"], columns=split.get("columns"))
        if "dataframe_records" in data:
            return pd.DataFrame.from_records(data["dataframe_records"])
        for key in ("instances", "inputs"):
            if key in data:
                return _tensor_like(data[key], columns)
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _tensor_like(value: Any, columns: list[str] | None) -> pd.DataFrame | None:
    if isinstance(value, dict):
        return pd.DataFrame(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return pd.DataFrame.from_records(value)
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        width = len(value[0])
        if columns and len(columns) == width and all(len(v) == width for v in value):
            return pd.DataFrame(value, columns=columns)
    return None


__all__ = ["LiveInputs", "live_inputs"]
