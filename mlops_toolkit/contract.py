"""The data contract stored beside every logged model: what the model expects as input.

Written as ``data_contract/input_schema.json`` in the run's artifacts so batch jobs,
clients and the serving smoke test can build a valid request without reading code.
"""

from __future__ import annotations

import json
import math
from typing import Any

CONTRACT_PATH = "data_contract/input_schema.json"
CONTRACT_FORMAT = "mlops-toolkit/data-contract/v1"


def build_contract(input_example: Any, signature: Any) -> dict[str, Any]:
    """Columns with types, and one example row, from an input example and its signature."""
    schema = signature.inputs.to_dict() if signature is not None and signature.inputs else []
    columns = [
        {"name": spec.get("name"), "type": spec.get("type"), "required": spec.get("required", True)}
        for spec in schema
    ]
    return {
        "format": CONTRACT_FORMAT,
        "columns": columns,
        "example_row": _first_row(input_example),
        "input_schema": schema,
    }


def _first_row(example: Any) -> Any:
    import numpy as np
    import pandas as pd

    if isinstance(example, pd.DataFrame):
        row = example.head(1).to_dict(orient="records")
        return _jsonable(row[0]) if row else None
    if isinstance(example, np.ndarray):
        return _jsonable(example[:1].tolist()[0]) if len(example) else None
    if isinstance(example, dict):
        return _jsonable({k: (v[0] if isinstance(v, list | tuple) and v else v) for k, v in example.items()})
    if isinstance(example, list | tuple):
        return _jsonable(example[0]) if example else None
    return None


def _jsonable(value: Any) -> Any:
    """Plain JSON values (numpy scalars become Python numbers, NaN becomes null)."""
    text = json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    loaded = json.loads(text)
    if isinstance(loaded, float) and math.isnan(loaded):
        return None
    return loaded
