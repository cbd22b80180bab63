"""Prometheus file-based service discovery for what autoserve serves.

The blackbox exporter probes every serving endpoint's ``/ping``; instead of a hand-kept
target list, the watcher writes the targets itself (Prometheus ``file_sd_configs``
format) whenever its routes change. Prometheus re-reads the file on change.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

log = logging.getLogger("autoserve.targets")


class _Routed(Protocol):
    model: str
    alias: str

    @property
    def version(self) -> int | None: ...

    @property
    def deployments(self) -> tuple: ...


def file_sd_groups(routes: Iterable[_Routed]) -> list[dict]:
    """One target group per routed (model, alias): every ready replica's /ping URL plus labels."""
    groups = [
        {"targets": [f"{e.url}/ping" for d in route.deployments for e in d.serving()],
         "labels": {"model": route.model, "alias": route.alias, "version": str(route.version)}}
        for route in routes
        if route.deployments
    ]
    return sorted(groups, key=lambda g: (g["labels"]["model"], g["labels"]["alias"]))


class TargetsFile:
    """Writes the file_sd JSON atomically (rename), and only when its content changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: str | None = None

    def write(self, routes: Iterable[_Routed]) -> bool:
        text = json.dumps(file_sd_groups(routes), indent=1)
        if text == self._last:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".targets-", suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                handle.write(text + "\n")
            os.chmod(tmp, 0o644)  # Prometheus runs as another user in its container
            os.replace(tmp, self.path)
        except OSError as exc:  # monitoring must never break serving
            log.warning("could not write the Prometheus targets file", extra={"path": str(self.path), "error": str(exc)})
            return False
        self._last = text
        return True
