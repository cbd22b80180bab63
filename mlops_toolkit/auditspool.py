"""The audit trail's background writer: ``record()`` never waits for the store, and an event
the store cannot take now waits on local disk until it can.

Why: the watcher records events on its reconcile thread. Written in line, a hung object
store stalled every model for as long as the client's timeouts and retries allowed, and a
failed write lost the event. With the writer on, ``record()`` hands the event (its key
already made) to a bounded queue and returns. A thread sends it; when that fails, or the
queue is full, the event goes to the spool (one JSON file per event, named by its key,
written atomically) and the spool is retried with back-off, oldest first, until the store
takes it; a sent spool file is deleted. The spool outlives the process: a new writer over
the same directory sends what the last one left.

At-least-once: an event may be sent twice (a stop gave up on a send that then succeeded;
a crash between a send and the spool file's deletion). The key is made once, at record
time, so a re-send writes the same key: S3 overwrites it with identical content, and a
file trail finds it exists, which means "already sent".

Bounded: the queue holds ``queue_limit`` events (more go straight to the spool) and the
spool ``spool_limit`` files (the oldest are dropped, counted and logged).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from mlops_toolkit.errors import ValidationError, one_line

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0  # first retry of the spool after a failed write
RETRY_MAX_S = 5.0  # back-off cap: an event reaches a store that is back within this much
DROP_LOG_EVERY_S = 30.0  # one warning per this many seconds while the spool overflows
_SINKS_KEPT = 4  # trails (URIs) whose client is kept open; one in practice


class Sink(Protocol):
    def write(self, key: str, body: str) -> None: ...


@dataclass(frozen=True)
class Pending:
    """One event on its way: where it goes, under which key, its JSON."""

    uri: str
    key: str
    body: str

    @property
    def file_name(self) -> str:
        """The spool file: the key flattened; names sort like keys (by time)."""
        return re.sub(r"[^A-Za-z0-9._-]", "_", self.key.replace("/", "-"))


class Spool:
    """Events waiting for the store: one file each, written atomically, at most ``limit``.
    Thread-safe: the caller's thread spools when the queue is full, the writer otherwise."""

    def __init__(self, root: Path, limit: int) -> None:
        if limit < 1:
            raise ValidationError(f"the audit spool needs room for at least one event, got limit={limit}")
        self.root, self.limit = root, limit
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in root.glob(".*.tmp"):  # a write cut short by a crash: its event was never spooled
            stale.unlink(missing_ok=True)
        self._count = len(self._names())

    def __len__(self) -> int:
        return self._count

    def names(self) -> list[str]:
        """Spooled files, oldest first (and the count made true again, should a file have
        been removed by hand)."""
        with self._lock:
            names = self._names()
            self._count = len(names)
            return names

    def _names(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("*.json"))

    def add(self, item: Pending) -> int:
        """Write ``item`` (again: the same key is the same file); returns how many of the
        oldest files were dropped to make room. Raises OSError when it cannot be written."""
        path = self.root / item.file_name
        tmp = self.root / f".{item.file_name}.{threading.get_ident()}.tmp"
        with self._lock:
            dropped = 0
            existed = path.exists()
            if not existed and self._count >= self.limit:
                oldest = self._names()
                self._count = len(oldest)
                while self._count >= self.limit and oldest:
                    (self.root / oldest.pop(0)).unlink(missing_ok=True)
                    self._count -= 1
                    dropped += 1
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(asdict(item), out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            if not existed:
                self._count += 1
            return dropped

    def load(self, name: str) -> Pending | None:
        """The event in a spool file; an unreadable file is set aside as ``.bad`` (kept, not
        retried) with a warning, and None is returned."""
        path = self.root / name
        try:
            return Pending(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable audit spool file set aside", extra={"file": str(path), "error": one_line(exc)})
            with self._lock:
                try:
                    path.rename(path.with_suffix(".bad"))
                    self._count -= 1
                except OSError:
                    pass
            return None

    def remove(self, name: str) -> None:
        with self._lock:
            try:
                (self.root / name).unlink()
                self._count -= 1
            except FileNotFoundError:
                pass


class BackgroundWriter:
    """Sends audit events on its own thread; see the module docstring for the rules.

    ``open_sink(uri)`` gives the trail's writer (kept per URI: one client, not one per
    event); ``on_result`` is told "sent", "spooled" or "dropped" for every event (metrics).
    """

    def __init__(self, spool_dir: Path, open_sink: Callable[[str], Sink], queue_limit: int = 1000,
                 spool_limit: int = 10_000, on_result: Callable[[str], None] | None = None,
                 retry_min: float = RETRY_MIN_S, retry_max: float = RETRY_MAX_S) -> None:
        if queue_limit < 1:
            raise ValidationError(f"the audit queue needs room for at least one event, got queue_limit={queue_limit}")
        self.spool = Spool(spool_dir, spool_limit)
        self.queue_limit = queue_limit
        self._open_sink, self._on_result = open_sink, on_result
        self._retry_min, self._retry_max = retry_min, retry_max
        self._sinks: dict[str, Sink] = {}
        self._queue: deque[Pending] = deque()
        self._inflight: Pending | None = None
        self._cond = threading.Condition()
        self._stopping = self._abandoned = False
        self._backoff = 0.0
        self._next_retry = 0.0  # monotonic time the spool is due; 0: now, if it holds anything
        self._outage_logged = False
        self._last_drop_log = float("-inf")
        self.sent = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)

    # -- the caller's side -----------------------------------------------------------
    def start(self) -> BackgroundWriter:
        if len(self.spool):
            log.info("audit events left by an earlier run will be sent", extra={"spooled": len(self.spool)})
        self._thread.start()
        return self

    def submit(self, item: Pending) -> None:
        """Queue ``item``; never waits for the store (a full queue spools it here)."""
        with self._cond:
            if not (self._stopping or self._abandoned) and len(self._queue) < self.queue_limit:
                self._queue.append(item)
                self._cond.notify()
                return
        self._to_spool(item)

    def stop(self, timeout: float) -> None:
        """Send what can be sent within ``timeout`` seconds; spool the rest (a send still
        under way too: at-least-once) and return."""
        if not self._thread.is_alive():
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return
        with self._cond:
            self._abandoned = True
            left = list(self._queue) + ([self._inflight] if self._inflight else [])
            self._queue.clear()
        for item in left:
            self._to_spool(item)
        log.warning("audit writer stopped before the store answered; the rest waits in the spool",
                    extra={"spooled": len(self.spool), "spool_dir": str(self.spool.root)})

    def stats(self) -> dict[str, int]:
        with self._cond:
            queued = len(self._queue) + (1 if self._inflight else 0)
        return {"queued": queued, "spooled": len(self.spool), "sent": self.sent, "dropped": self.dropped}

    # -- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._stopping or self._spool_due()):
                    self._cond.wait(self._until_spool_due())
                if self._abandoned or (self._stopping and not self._queue):
                    return  # what is spooled stays for the next writer
                item = None if self._spool_due() and not self._stopping else self._queue.popleft()
                self._inflight = item
            if item is None:
                self._drain_spool()
            else:
                self._deliver(item)
                with self._cond:
                    self._inflight = None

    def _spool_due(self) -> bool:
        return len(self.spool) > 0 and time.monotonic() >= self._next_retry

    def _until_spool_due(self) -> float | None:
        return max(0.01, self._next_retry - time.monotonic()) if len(self.spool) else None

    def _deliver(self, item: Pending) -> None:
        """Send one queued event; while older ones wait in the spool it joins them, so the
        trail gets them oldest first."""
        if len(self.spool) == 0:
            error = self._send(item)
            if error is None:
                return
            self._failed(item.uri, error)
        self._to_spool(item)

    def _drain_spool(self) -> None:
        """Send spooled events oldest first; a trail that fails is retried after back-off
        (its later events wait, another trail's go on)."""
        names = self.spool.names()
        failed: dict[str, Exception] = {}
        for name in names:
            if self._abandoned or self._stopping:
                return
            item = self.spool.load(name)
            if item is None or item.uri in failed:
                continue
            error = self._send(item)
            if error is None:
                self.spool.remove(name)
            else:
                failed[item.uri] = error
        for uri, error in failed.items():
            self._failed(uri, error)
        if names and not failed and self._outage_logged:
            log.info("audit store answers again; spooled events sent", extra={"spooled": len(self.spool),
                                                                              "sent": self.sent})
            self._outage_logged = False

    def _send(self, item: Pending) -> Exception | None:
        """Write one event; the error when the store did not take it."""
        try:
            sink = self._sinks.get(item.uri)
            if sink is None:
                if len(self._sinks) >= _SINKS_KEPT:
                    self._sinks.clear()
                sink = self._sinks[item.uri] = self._open_sink(item.uri)
            sink.write(item.key, item.body)
        except Exception as exc:  # noqa: BLE001 - any storage failure: spool and retry later
            self._sinks.pop(item.uri, None)  # a fresh client (and connections) for the retry
            return exc
        self._backoff, self._next_retry = 0.0, 0.0
        self.sent += 1
        self._tell("sent")
        return None

    def _failed(self, uri: str, error: Exception) -> None:
        """Back off before the spool is tried again; warn once per outage."""
        self._backoff = min(self._retry_max, max(self._retry_min, self._backoff * 2))
        self._next_retry = time.monotonic() + self._backoff
        if not self._outage_logged:
            log.warning("audit store unavailable; events wait in the spool", extra={
                "uri": uri, "error": one_line(error), "spool_dir": str(self.spool.root), "retry_in_s": self._backoff})
            self._outage_logged = True

    # -- both sides --------------------------------------------------------------------
    def _to_spool(self, item: Pending) -> None:
        try:
            dropped = self.spool.add(item)
        except OSError as exc:
            self._drop(1, f"the spool cannot be written: {one_line(exc)}")
            return
        self._tell("spooled")
        if dropped:
            self._drop(dropped, f"the spool is full ({self.spool.limit} events): the oldest were dropped")
        with self._cond:
            self._cond.notify()

    def _drop(self, count: int, why: str) -> None:
        with self._cond:
            self.dropped += count
        for _ in range(count):
            self._tell("dropped")
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.warning(f"audit events lost: {why}", extra={"dropped": self.dropped,
                                                            "spool_dir": str(self.spool.root)})

    def _tell(self, result: str) -> None:
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:  # noqa: BLE001 - a metrics hook must never stop the writer
                log.exception("audit result hook failed")


__all__ = ["BackgroundWriter", "Pending", "Spool"]
