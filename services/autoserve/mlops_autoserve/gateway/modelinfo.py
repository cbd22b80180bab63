"""The metadata of the versions in the route table, as the watcher wrote it
(:mod:`modelmeta`), read from the state dir once per version and kept while the version
is in the table: nothing is asked of the registry per request."""

from __future__ import annotations

import time
from pathlib import Path

from mlops_autoserve.modelmeta import Signature, VersionMetadata, read_metadata

RETRY_S = 2.0  # a version whose file is not there yet is looked for again after this long


class ModelInfo:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self._cache: dict[tuple[str, int], tuple[VersionMetadata | None, float]] = {}

    def get(self, model: str, version: int) -> VersionMetadata | None:
        key = (model, int(version))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and (hit[0] is not None or now - hit[1] < RETRY_S):
            return hit[0]
        metadata = read_metadata(self.state_dir, model, version)  # a small local file (at most 1 MB)
        self._cache[key] = (metadata, now)
        return metadata

    def signature(self, model: str, version: int) -> Signature:
        metadata = self.get(model, version)
        return metadata.parsed if metadata is not None else Signature()

    def keep_only(self, versions: set[tuple[str, int]]) -> None:
        """Forget versions the table no longer has (the cache is bounded by the table)."""
        for key in [k for k in self._cache if k not in versions]:
            del self._cache[key]
