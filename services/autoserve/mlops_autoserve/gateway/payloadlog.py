"""The payload log: a sample of answered requests, written to the app-db off the request path.

``offer`` runs on the gateway's event loop and never waits: it flips the sampling coin and
puts the request in an in-memory buffer bounded in rows and in bytes (request + response of
the waiting rows); past either bound the row is dropped and counted. One writer thread takes
rows from the buffer (which frees their bytes) and inserts them in batches (up to
:data:`BATCH_ROWS` rows or :data:`BATCH_BYTES`, or every :data:`FLUSH_SECONDS`).

A batch the database refuses because of what a row holds (PostgreSQL takes no NUL character
in text, a name too long for its column...) is split in halves until the refused rows stand
alone: only those are lost (counted ``refused``), the others are written. A batch that fails
because the database is away is dropped whole (counted ``failed``, one warning per minute)
at its first connection error, instead of holding memory while the database is away. The
same thread deletes rows older than the retention once an hour. ``dag_model_monitoring``
reads the rows back for drift on live inputs.
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
BATCH_BYTES = 8 * 1024 * 1024  # a batch closes once its bodies hold this much (one INSERT stays modest)
FLUSH_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 3600.0
WARN_EVERY_SECONDS = 60.0


class RowBuffer:
    """Rows waiting for the writer, bounded in count and in bytes; ``put`` never waits.

    The byte count is shared by the event loop (``put``) and the writer thread (``get``), so
    it changes under a lock held only for a sum and a put that does not wait.
    """

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._queue: queue.Queue = queue.Queue(maxsize=max_rows)
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, row: tuple, size: int) -> str | None:
        """Queue ``row`` holding ``size`` bytes; the bound it would pass ("rows", "bytes") if not."""
        with self._lock:
            if self._bytes + size > self.max_bytes:
                return "bytes"
            try:
                self._queue.put_nowait((row, size))
            except queue.Full:
                return "rows"
            self._bytes += size
        return None

    def get(self, timeout: float) -> tuple[tuple, int]:
        """The oldest row and its size, its bytes freed (``queue.Empty`` after ``timeout`` s)."""
        row, size = self._queue.get(timeout=timeout)
        with self._lock:
            self._bytes -= size
        return row, size

    @property
    def bytes(self) -> int:
        return self._bytes

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()


class PayloadLog:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics, coin: random.Random) -> None:
        self.rate = settings.payload_log_rate
        self.url = settings.payload_log_db
        self.retention = dt.timedelta(days=settings.payload_log_retention_days)
        self.max_body = settings.payload_log_max_body_bytes
        self.metrics = metrics
        self.coin = coin
        self.buffer = RowBuffer(settings.payload_log_buffer, settings.payload_log_buffer_bytes)
        self._dropped = metrics.payload_log_rows.labels("dropped")
        self._bytes_limit = metrics.limits_total.labels("payload_log_bytes")
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
        bound = self.buffer.put(row, len(request) + len(response))
        if bound is not None:
            self._dropped.inc()
            if bound == "bytes":
                self._bytes_limit.inc()

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
        size = 0
        deadline = time.monotonic() + FLUSH_SECONDS
        while len(batch) < BATCH_ROWS and size < BATCH_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._stop.is_set() and self.buffer.empty()):
                break
            try:
                row, row_size = self.buffer.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            batch.append(row)
            size += row_size
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
        """Insert ``batch``; a refused one is split in halves down to the rows the database refuses.

        A batch with one bad row costs about 2·log2(rows) inserts; one where every row is bad,
        2·rows - 1. An error that is not about a row's data (the database away, a broken
        schema) ends the batch at once: what is not written yet counts as failed.
        """
        from mlops_toolkit.batch.appdb import insert_payloads

        rows = [{"logged_at": t, "model_name": m, "alias": a, "model_version": v, "status": s, "latency_ms": ms,
                 "request": req.decode("utf-8", "replace"), "response": resp.decode("utf-8", "replace")}
                for t, m, a, v, s, ms, req, resp in batch]
        if not self._ready():
            self._failed(len(rows), ConnectionError("app-db not ready"))
            return
        written = refused = 0
        pending = [rows]
        while pending:
            part = pending.pop()
            try:
                insert_payloads(self._engine, part)
            except Exception as exc:  # noqa: BLE001 - a lost row is counted, serving goes on
                if not refused_for_its_data(exc):
                    self._failed(len(part) + sum(len(p) for p in pending), exc)
                    break
                if len(part) == 1:
                    refused += 1
                    self._warn("payload log: the app-db refused a row", exc, model=part[0]["model_name"])
                    continue
                half = len(part) // 2
                pending += [part[half:], part[:half]]  # the first half is tried first
            else:
                written += len(part)
        if written:
            self.metrics.payload_log_rows.labels("written").inc(written)
        if refused:
            self.metrics.payload_log_rows.labels("refused").inc(refused)

    def _failed(self, rows: int, exc: Exception) -> None:
        self.metrics.payload_log_rows.labels("failed").inc(rows)
        self._warn("payload log: a batch was not written", exc, rows=rows)

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


def refused_for_its_data(exc: Exception) -> bool:
    """Whether the database refused what a row holds (a NUL character, a value too long, a
    missing field) rather than failing for every row (away, a connection lost, no table)."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.DBAPIError):
        return isinstance(exc, (sa.DataError, sa.IntegrityError)) and not exc.connection_invalidated
    if isinstance(exc, sa.StatementError):  # a value its column's type could not bind
        return isinstance(exc.orig, (ValueError, TypeError))
    return isinstance(exc, (ValueError, TypeError))


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparseable URL)"
