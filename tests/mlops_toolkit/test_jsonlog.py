"""JSON logs: one object per line with the fields Promtail and Loki rely on."""

from __future__ import annotations

import io
import json
import logging

from mlops_toolkit import configure_json_logging


def test_one_json_object_per_line_with_extras():
    stream = io.StringIO()
    configure_json_logging(service="autoserve", stream=stream)
    configure_json_logging(service="autoserve", stream=stream)  # idempotent: no duplicate lines
    log = logging.getLogger("autoserve.reconcile")
    log.info("deployed", extra={"model": "iris", "alias": "Production", "version": 3})
    log.warning("slow")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "autoserve.reconcile"
    assert first["message"] == "deployed" and first["service"] == "autoserve"
    assert (first["model"], first["alias"], first["version"]) == ("iris", "Production", 3)
    assert "timestamp" in first and second["level"] == "WARNING"
    logging.getLogger().handlers.clear()
