"""Values that fit MLflow's tag columns on every backend, not only on SQLite.

MLflow's client accepts registry tag values up to 100,000 characters, but its SQL schema
is narrower: in MLflow 3.17 ``registered_model_tags.value`` is ``VARCHAR(5000)`` and run
``tags.value`` ``VARCHAR(8000)`` (model-version tag values were widened to TEXT by the
``bda7b8c39065`` migration). PostgreSQL and MySQL enforce those lengths, SQLite does not, so
a value that passes every SQLite test can fail in production. Everything the toolkit or the
watcher writes into a tag goes through :func:`fit` with the limit of its column.
"""

from __future__ import annotations

REGISTERED_MODEL_TAG_MAX = 5000
MODEL_VERSION_TAG_MAX = 5000  # TEXT in the schema; kept short so the registry UI stays readable
RUN_TAG_MAX = 5000  # VARCHAR(8000) in the schema
TAG_KEY_MAX = 250  # registered_model_tags.key and model_version_tags.key are VARCHAR(250)


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    while True:
        marker = f"...[cut {cut} chars]"
        keep = limit - len(marker)
        if keep < 0:
            return text[:limit]
        if len(text) - keep == cut:
            return text[:keep] + marker
        cut = len(text) - keep


def json_object(raw: str) -> dict:
    """A tag's value as a JSON object, or ValueError saying why not (a registry writer can
    leave anything in a tag: not JSON, another type, nesting too deep for the parser)."""
    import json

    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data
