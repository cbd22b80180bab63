"""Structured logs for long-running services: one JSON object per line.

Promtail parses these lines, so ``level``, ``logger``, ``service`` and any ``extra=``
fields (model, alias, version...) become searchable in Loki without regexes.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from pythonjsonlogger.json import JsonFormatter

_HANDLER_NAME = "mlops-json"


def json_formatter(service: str | None = None) -> JsonFormatter:
    """The formatter every service uses: timestamp, level, logger, message, extras."""
    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"service": service} if service else None,
        timestamp=True,
    )


def configure_json_logging(
    service: str | None = None,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
) -> logging.Logger:
    """Send the root logger to ``stream`` (stderr) as JSON lines; safe to call twice."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(json_formatter(service))
    root.addHandler(handler)
    root.setLevel(level)
    return root
