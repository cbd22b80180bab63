"""The payload log: a sample of answered requests, written to the app-db off the request path.

``offer`` runs on the gateway's event loop and never waits: it flips the sampling coin and
puts the request in a bounded in-memory buffer (full: the row is dropped and counted). One
writer thread takes rows from the buffer and inserts them in batches (up to
:data:`BATCH_ROWS` or every :data:`FLUSH_SECONDS`); a failed insert drops its batch (counted,
one warning per minute) instead of holding memory while the database is away. The same
thread deletes rows older than the retention once an hour. ``dag_model_monitoring`` reads
the rows back for drift on live inputs.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import random
import threading
import time

from mlops_autoserve.metrics import GatewayMetrics
from mlops_autoserve.settings import GatewaySettings
from mlops_toolkit.errors import one_line

log = logging.getLogger("autoserve.payload_log")

BATCH_ROWS = 500
FLUSH_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 3600.0
WARN_EVERY_SECONDS = 60.0


class PayloadLog:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics, coin: random.Random) -> None:
        self.rate = settings.payload_log_rate
        self.url = settings.payload_log_db
        self.retention = dt.timedelta(days=settings.payload_log_retention_days)
        self.max_body = settings.payload_log_max_body_bytes
        self.metrics = metrics
        self.coin = coin
        self.buffer: queue.Queue = queue.Queue(maxsize=settings.payload_log_buffer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine = None
        self._warned_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0 and bool(self.url)

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is buffered (for at most ``timeout`` s), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def offer(self, model: str, alias: str, version: str, request: bytes | None, response: bytes, status: int,
              seconds: float) -> None:
        """Maybe log one answered request: never blocks, never raises."""
        if not self.enabled or not version.isdigit() or self.coin.random() >= self.rate:
            return
        if request is None or len(request) > self.max_body or len(response) > self.max_body:
            self.metrics.payload_log_rows.labels("skipped").inc()
            return
        row = (dt.datetime.now(dt.timezone.utc), model, alias, int(version), status, seconds * 1000, request, response)
        try:
            self.buffer.put_nowait(row)
        except queue.Full:
            self.metrics.payload_log_rows.labels("dropped").inc()

    # -- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        next_prune = 0.0
        while not (self._stop.is_set() and self.buffer.empty()):
            batch = self._take()
            if batch:
                self._write(batch)
            if time.monotonic() >= next_prune and self._ready():
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                self._prune()

    def _take(self) -> list[tuple]:
        batch: list[tuple] = []
        deadline = time.monotonic() + FLUSH_SECONDS
        while len(batch) < BATCH_ROWS:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._stop.is_set() and self.buffer.empty()):
                break
            try:
                batch.append(self.buffer.get(timeout=min(remaining, 0.2)))
            except queue.Empty:
                continue
        return batch

    def _ready(self) -> bool:
        """The engine, with the schema migrated; False (warned) while the database is away."""
        if self._engine is not None:
            return True
        from sqlalchemy import create_engine

        from mlops_toolkit.batch.appdb import migrate

        try:
            connect_args = {"connect_timeout": 5} if self.url.startswith("postgresql") else {}
            engine = create_engine(self.url, pool_pre_ping=True, connect_args=connect_args)
            migrate(engine)
        except Exception as exc:  # noqa: BLE001 - the database may come later; serving goes on
            self._warn("payload log: app-db not ready", exc)
            return False
        self._engine = engine
        log.info("payload log writing", extra={"rate": self.rate, "db": redacted(self.url)})
        return True

    def _write(self, batch: list[tuple]) -> None:
        from mlops_toolkit.batch.appdb import insert_payloads

        rows = [{"logged_at": t, "model_name": m, "alias": a, "model_version": v, "status": s, "latency_ms": ms,
                 "request": req.decode("utf-8", "replace"), "response": resp.decode("utf-8", "replace")}
                for t, m, a, v, s, ms, req, resp in batch]
        try:
            if not self._ready():
                raise ConnectionError("app-db not ready")
            insert_payloads(self._engine, rows)
        except Exception as exc:  # noqa: BLE001 - a lost batch is counted, serving goes on
            self.metrics.payload_log_rows.labels("failed").inc(len(rows))
            self._warn("payload log: a batch was not written", exc, rows=len(rows))
            return
        self.metrics.payload_log_rows.labels("written").inc(len(rows))

    def _prune(self) -> None:
        from mlops_toolkit.batch.appdb import prune_payload_log

        try:
            gone = prune_payload_log(self._engine, dt.datetime.now(dt.timezone.utc) - self.retention)
        except Exception as exc:  # noqa: BLE001
            self._warn("payload log: pruning old rows failed", exc)
            return
        if gone:
            log.info("payload log pruned", extra={"rows": gone, "retention_days": self.retention.days})

    def _warn(self, message: str, exc: Exception, **fields: object) -> None:
        if time.monotonic() - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = time.monotonic()
            log.warning(message, extra={"error": one_line(exc), **fields})


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"
