"""The audit trail: one immutable JSON object per governed event, in a directory or a bucket.

``MLOPS_AUDIT_URI`` says where: ``file:///var/lib/mlops/audit`` (embedded) or
``s3://bucket/prefix`` (MinIO in the compose stack; the endpoint comes from
``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``, credentials from the usual AWS
variables). Unset: no trail is written.

Keys sort by time: ``<prefix>/YYYY/MM/DD/<nanoseconds>-<action>-<random>.json``; an object is
written once and never rewritten (a file is created exclusively and made read-only).

Whether a failed write stops the action is the caller's choice (``strict``): in prod an
alias move whose event cannot be written is refused before anything moves; in dev it is a
warning and the move goes on.

A long-running service (the autoserve watcher) turns on the background writer
(``start_background``, :mod:`mlops_toolkit.auditspool`): its non-strict events are then
queued and sent by a thread, and kept in a local spool while the store is away, so a hung
store neither stalls the caller nor loses the event. Strict events stay in line. Every
write to S3 has short timeouts: a hung store costs seconds, not minutes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlops_toolkit.auditspool import BackgroundWriter, Pending
from mlops_toolkit.errors import MlopsError, ValidationError, one_line
from mlops_toolkit.governance import Decision, acting_user, environment

log = logging.getLogger(__name__)

AUDIT_FORMAT = 1


class AuditUnavailable(MlopsError):
    """The audit event could not be written (and the action needs it)."""

    exit_code = 1


@dataclass(frozen=True)
class AuditEvent:
    action: str
    outcome: str  # done | refused | failed | passed ... (what happened)
    user: str
    roles: tuple[str, ...]
    environment: str
    time: str  # ISO 8601, UTC, milliseconds
    host: str
    model: str | None = None
    alias: str | None = None
    version: int | None = None
    from_version: int | None = None
    to_version: int | None = None
    reason: str | None = None
    details: dict = field(default_factory=dict)
    key: str = ""  # where it is stored (filled when read back)


def audit_uri() -> str | None:
    return os.environ.get("MLOPS_AUDIT_URI", "").strip() or None


def record(action: str, outcome: str = "done", *, decision: Decision | None = None, strict: bool = False,
           **fields: object) -> AuditEvent | None:
    """Write one event; None when no trail is configured.

    ``strict``: a failed write raises AuditUnavailable (the caller refuses its action); else
    it is logged as a warning and the action goes on.
    """
    uri = audit_uri()
    if uri is None:
        return None
    event = AuditEvent(
        action=action, outcome=outcome,
        user=decision.user if decision else acting_user(),
        roles=tuple(decision.roles) if decision else (),
        environment=decision.environment if decision else environment(),
        time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        host=socket.gethostname(),
        **{k: v for k, v in fields.items() if k in _FIELDS},
        details={k: v for k, v in fields.items() if k not in _FIELDS},
    )
    key = _key(action)  # made once: a re-send from the spool writes the same key
    body = json.dumps({"format": AUDIT_FORMAT, **_public(event)}, sort_keys=True, default=str)
    writer = _background
    try:
        if writer is not None and not strict:
            _target(uri)  # a wrong URI is the caller's warning now, not a spool that never empties
            writer.submit(Pending(uri, key, body))
        else:
            sink(uri).write(key, body)
    except Exception as exc:  # noqa: BLE001 - any storage failure
        message = f"audit event {action} could not be written to {uri}: {one_line(exc)}"
        if strict:
            raise AuditUnavailable(message) from None
        log.warning(message)
        return None
    return AuditEvent(**{**asdict(event), "key": key})


_background: BackgroundWriter | None = None
_background_lock = threading.Lock()


def start_background(spool_dir: Path, queue_limit: int = 1000, spool_limit: int = 10_000,
                     on_result: Callable[[str], None] | None = None) -> BackgroundWriter:
    """Send this process's non-strict events from a thread, spooling to ``spool_dir`` what
    the store cannot take now (and sending what an earlier run left there).

    ``on_result`` is told "sent", "spooled" or "dropped" per event (for metrics). Calling
    it again while on is an error: one spool per process.
    """
    global _background
    with _background_lock:
        if _background is not None:
            raise MlopsError(f"the audit background writer is already on (spool {_background.spool.root})")
        _background = BackgroundWriter(Path(spool_dir), sink, queue_limit=queue_limit, spool_limit=spool_limit,
                                       on_result=on_result).start()
        return _background


def stop_background(timeout: float = 2.0) -> None:
    """Back to writing in line; first send what the writer can within ``timeout`` seconds
    (the rest stays in the spool for the next start)."""
    global _background
    with _background_lock:
        writer, _background = _background, None
    if writer is not None:
        writer.stop(timeout)


def background_stats() -> dict[str, int]:
    """Events queued, spooled, sent and dropped by the background writer (zeros when off)."""
    writer = _background
    return writer.stats() if writer is not None else {"queued": 0, "spooled": 0, "sent": 0, "dropped": 0}


def list_events(since: datetime | None = None, model: str | None = None, action: str | None = None,
                uri: str | None = None) -> list[AuditEvent]:
    """Events oldest first, filtered; an unreadable object is skipped with a warning."""
    uri = uri or audit_uri()
    if uri is None:
        raise ValidationError("no audit trail configured: set MLOPS_AUDIT_URI (file:///dir or s3://bucket/prefix)")
    found = []
    store = sink(uri)
    for key in store.keys():
        try:
            data = json.loads(store.read(key))
            data.pop("format", None)
            event = AuditEvent(**{**data, "roles": tuple(data.get("roles") or ()), "key": key})
        except (ValueError, TypeError) as exc:
            log.warning(f"skipping unreadable audit object {key}: {one_line(exc)}")
            continue
        if since and datetime.fromisoformat(event.time) < since:
            continue
        if (model and event.model != model) or (action and not (event.action == action
                                                                 or event.action.startswith(action + "."))):
            continue
        found.append(event)
    return found


_FIELDS = {"model", "alias", "version", "from_version", "to_version", "reason"}


def _public(event: AuditEvent) -> dict:
    data = asdict(event)
    data.pop("key")
    data["roles"] = list(event.roles)
    return data


def _key(action: str) -> str:
    now = time.time_ns()
    day = datetime.fromtimestamp(now / 1e9, timezone.utc).strftime("%Y/%m/%d")
    return f"{day}/{now:020d}-{action}-{secrets.token_hex(4)}.json"


class _Files:
    """A directory: each event a read-only file, complete or absent, created exclusively."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, key: str, body: str) -> None:
        """Write the event whole under a temporary name, then link it to its key: the key
        never names half an event, and a key that exists is an event already sent (a re-send
        from the spool), so it is left as it is."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # the same key is the same event: sent before
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                self._write_in_place(path, body)  # a file system without hard links
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _write_in_place(path: Path, body: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            return  # sent before
        with os.fdopen(fd, "w") as out:
            out.write(body)

    def keys(self) -> Iterator[str]:
        if not self.root.exists():
            return iter(())
        return iter(sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.json")))

    def read(self, key: str) -> str:
        return (self.root / key).read_text()


# Writes give up quickly (a hung store costs a strict caller seconds; the background
# writer spools and retries itself); listing may wait longer: a person is reading.
WRITE_CLIENT = {"connect_timeout": 2, "read_timeout": 2, "retries": {"total_max_attempts": 2, "mode": "standard"}}
READ_CLIENT = {"connect_timeout": 5, "read_timeout": 30, "retries": {"total_max_attempts": 3, "mode": "standard"}}


class _Bucket:
    """An S3 bucket (MinIO, AWS, moto) under a prefix."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3

        # A session of its own: boto3's default session is not safe to share between threads.
        self._session = boto3.session.Session()
        self._endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
        self._clients: dict[str, object] = {}
        self.bucket, self.prefix = bucket, prefix.strip("/")

    def _client(self, purpose: str):
        if purpose not in self._clients:
            from botocore.config import Config

            settings = WRITE_CLIENT if purpose == "write" else READ_CLIENT
            self._clients[purpose] = self._session.client("s3", endpoint_url=self._endpoint,
                                                          config=Config(**settings))
        return self._clients[purpose]

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def write(self, key: str, body: str) -> None:
        """Put the object; a re-send of the same key overwrites it with the same content."""
        self._client("write").put_object(Bucket=self.bucket, Key=self._full(key), Body=body.encode(),
                                         ContentType="application/json")

    def keys(self) -> Iterator[str]:
        """Every key, in order (S3 lists keys in UTF-8 byte order: time order here)."""
        paginator = self._client("read").get_paginator("list_objects_v2")
        base = self._full("")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                yield item["Key"][len(base):]

    def read(self, key: str) -> str:
        return self._client("read").get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read().decode()


def _target(uri: str) -> tuple[str, str, str]:
    """(scheme, directory or bucket, prefix) of a trail URI; ValidationError when it is neither."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return "file", urllib.parse.unquote(parsed.path), ""
    if parsed.scheme == "s3" and parsed.netloc:
        return "s3", parsed.netloc, parsed.path
    raise ValidationError(f"MLOPS_AUDIT_URI must be file:///dir or s3://bucket/prefix, got {uri!r}")


def sink(uri: str) -> _Files | _Bucket:
    scheme, where, prefix = _target(uri)
    return _Files(Path(where)) if scheme == "file" else _Bucket(where, prefix)


__all__ = ["AuditEvent", "AuditUnavailable", "audit_uri", "background_stats", "list_events", "record",
           "start_background", "stop_background"]
