"""Publishes the metadata of every version the watcher runs (:mod:`modelmeta`): read from
the registry once per version, written to ``<state_dir>/metadata/``, where the gateway
reads it for V2 metadata and infer translation.

A controller like the others, but the reads (MLmodel, the serving input example,
requirements.txt, the run's data contract) run on one thread of its own: a registry or
artifact store that hangs delays metadata only, never a reconcile cycle. A version whose
read failed is tried again after ``RETRY_S``; at most ``MAX_PENDING`` wait. Files of
versions no deployment runs are removed once older than ``KEEP_S``.
"""

from __future__ import annotations

import json
import logging
import queue
import tempfile
import threading
import time
from pathlib import Path

from mlops_autoserve.modelmeta import (
    METADATA_DIR,
    VersionMetadata,
    metadata_path,
    write_metadata,
)
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.deployer import EXAMPLE_FILE
from mlops_autoserve.watcher.envspec import REQUIREMENTS_FILE, requirement_lines
from mlops_autoserve.watcher.observe import Snapshot
from mlops_toolkit.contract import CONTRACT_PATH
from mlops_toolkit.errors import one_line

log = logging.getLogger("autoserve.metadata")

MAX_PENDING = 256
RETRY_S = 30.0
KEEP_S = 600.0  # a version's file outlives its last deployment this long (a quick move back finds it)
PRUNE_EVERY_S = 60.0
MAX_EXAMPLE_BYTES = 256 * 1024  # a larger input example is left out of the metadata


def fetch_metadata(tracking_uri: str, model: str, version: int) -> VersionMetadata:
    """Read one version's metadata from the registry and its artifacts."""
    import yaml
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    model_version = client.get_model_version(model, str(version))
    with tempfile.TemporaryDirectory() as folder:
        def fetch(uri: str) -> bytes | None:
            try:
                return Path(download_artifacts(artifact_uri=uri, dst_path=folder, tracking_uri=tracking_uri)).read_bytes()
            except (MlflowException, OSError):
                return None

        mlmodel = yaml.safe_load(fetch(f"models:/{model}/{version}/MLmodel") or b"{}") or {}
        example = fetch(f"models:/{model}/{version}/{EXAMPLE_FILE}")
        requirements = fetch(f"models:/{model}/{version}/{REQUIREMENTS_FILE}")
        contract = fetch(f"runs:/{model_version.run_id}/{CONTRACT_PATH}") if model_version.run_id else None
    return VersionMetadata(
        model, int(version), model_version.run_id, tuple(str(f) for f in (mlmodel.get("flavors") or {})),
        mlmodel.get("signature") if isinstance(mlmodel.get("signature"), dict) else None,
        _json(example) if example is not None and len(example) <= MAX_EXAMPLE_BYTES else None,
        tuple(requirement_lines(requirements.decode("utf-8", "replace"))) if requirements else (),
        _json(contract) if contract else None)


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


class MetadataPublisher:
    name = "metadata"

    def __init__(self, settings: AutoserveSettings, fetch=fetch_metadata) -> None:  # noqa: ANN001
        self.state_dir = Path(settings.state_dir)
        self.tracking_uri = settings.tracking_uri
        self.fetch = fetch
        self._pending: set[tuple[str, int]] = set()
        self._written: set[tuple[str, int]] = set()  # known to have a file: no stat per cycle
        self._retry_at: dict[tuple[str, int], float] = {}
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        self._thread = threading.Thread(target=self._work, name="metadata", daemon=True)
        self._thread.start()

    def reconcile(self, snap: Snapshot) -> None:
        running = {(d.key.model, int(d.key.version)) for d, _ in snap.observed}
        now = time.monotonic()
        with self._lock:
            self._retry_at = {k: t for k, t in self._retry_at.items() if k in running}
            self._written &= running
            for key in sorted(running - self._written):
                if key in self._pending or self._retry_at.get(key, 0.0) > now:
                    continue
                if metadata_path(self.state_dir, *key).exists():  # written by an earlier watcher
                    self._written.add(key)
                    continue
                if len(self._pending) >= MAX_PENDING:
                    break
                self._pending.add(key)
                self._queue.put(key)
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            self._prune(running)

    def _work(self) -> None:
        while (key := self._queue.get()) is not None:
            try:
                path = write_metadata(self.state_dir, self.fetch(self.tracking_uri, *key))
                with self._lock:
                    self._written.add(key)
                log.info("model metadata published", extra={"model": key[0], "version": key[1], "path": str(path)})
            except Exception as exc:  # noqa: BLE001 - one version's failure is that version's
                log.warning("model metadata could not be read; trying again later",
                            extra={"model": key[0], "version": key[1], "error": one_line(exc)})
                with self._lock:
                    self._retry_at[key] = time.monotonic() + RETRY_S
            finally:
                with self._lock:
                    self._pending.discard(key)

    def _prune(self, running: set[tuple[str, int]]) -> None:
        keep = {metadata_path(self.state_dir, *key) for key in running}
        too_old = time.time() - KEEP_S
        for path in (self.state_dir / METADATA_DIR).glob("*/*.json"):
            try:
                if path not in keep and path.stat().st_mtime < too_old:
                    path.unlink()
            except OSError:
                pass

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def idle(self) -> bool:
        with self._lock:
            return not self._pending
