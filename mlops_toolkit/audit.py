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
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

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
    key = _key(action)
    try:
        sink(uri).write(key, json.dumps({"format": AUDIT_FORMAT, **_public(event)}, sort_keys=True, default=str))
    except Exception as exc:  # noqa: BLE001 - any storage failure
        message = f"audit event {action} could not be written to {uri}: {one_line(exc)}"
        if strict:
            raise AuditUnavailable(message) from None
        log.warning(message)
        return None
    return AuditEvent(**{**asdict(event), "key": key})


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
    """A directory: each event a read-only file created exclusively."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, key: str, body: str) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(fd, "w") as out:
            out.write(body)

    def keys(self) -> Iterator[str]:
        if not self.root.exists():
            return iter(())
        return iter(sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.json")))

    def read(self, key: str) -> str:
        return (self.root / key).read_text()


class _Bucket:
    """An S3 bucket (MinIO, AWS, moto) under a prefix."""

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3

        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
        self.client = boto3.client("s3", endpoint_url=endpoint)
        self.bucket, self.prefix = bucket, prefix.strip("/")

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def write(self, key: str, body: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=body.encode(),
                               ContentType="application/json")

    def keys(self) -> Iterator[str]:
        """Every key, in order (S3 lists keys in UTF-8 byte order: time order here)."""
        paginator = self.client.get_paginator("list_objects_v2")
        base = self._full("")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            for item in page.get("Contents", []):
                yield item["Key"][len(base):]

    def read(self, key: str) -> str:
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read().decode()


def sink(uri: str) -> _Files | _Bucket:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return _Files(Path(urllib.parse.unquote(parsed.path)))
    if parsed.scheme == "s3" and parsed.netloc:
        return _Bucket(parsed.netloc, parsed.path)
    raise ValidationError(f"MLOPS_AUDIT_URI must be file:///dir or s3://bucket/prefix, got {uri!r}")


__all__ = ["AuditEvent", "AuditUnavailable", "audit_uri", "list_events", "record"]
