"""Move registered-model aliases and keep a durable, shared history of every move.

The history lives in the registry itself, so the CLI, every notebook and the serving
watcher read the same record. It is **append-only**: each move is its own registered-model
tag, ``mlops.alias_event.<alias>.<nanoseconds>-<random>``, whose value is one small JSON
event. Concurrent writers therefore never overwrite each other (MLflow has no
compare-and-set on tags, so a read-modify-write of one shared tag loses events), and every
value fits the 5,000-character ``registered_model_tags.value`` column of PostgreSQL and
MySQL. Each alias keeps its newest :data:`HISTORY_LIMIT` events; older ones are pruned.

The event is written *before* the alias moves: a move never happens without its record.
If the history write fails, nothing moves and the error says so; if the move itself fails,
the event is taken back.

Rollback walks that history like an undo stack: each ``set``/``delete`` pushes the version
it replaced, each ``rollback`` pops one, so repeated rollbacks step further back.
Moves made outside the toolkit (MLflow UI, raw client) are not in the history.

Histories written by earlier releases (one JSON list in ``mlops.alias_history.<alias>``)
are still read, and moved to per-event tags on the next write. An entry that cannot be
read (hand-edited, corrupt, or from a newer release) is skipped with a one-line warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mlops_toolkit import audit
from mlops_toolkit.approvals import check_deployable
from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import NotFoundError, ValidationError, one_line
from mlops_toolkit.governance import Decision, acting_user, require
from mlops_toolkit.registry import (
    alias_map,
    get_model,
    iter_registered_models,
    latest_version_number,
)
from mlops_toolkit.tags import REGISTERED_MODEL_TAG_MAX, TAG_KEY_MAX, fit

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel

log = logging.getLogger(__name__)

EVENT_TAG_PREFIX = "mlops.alias_event."
LEGACY_HISTORY_TAG_PREFIX = "mlops.alias_history."  # one JSON list per alias (toolkit 0.1)
HISTORY_LIMIT = 100
REASON_MAX_CHARS = 1000
USER_MAX_CHARS = 200
EVENT_FORMAT = 2  # version of one event's JSON; the legacy list is format 1

_ALIAS_RE = re.compile(r"^[\w\-]+$")  # MLflow's own rule for alias names
_VERSION_ALIAS_RE = re.compile(r"^[vV]\d+$")
_MLFLOW_ALIAS_MAX = 255


@dataclass(frozen=True)
class AliasChange:
    """What one alias operation did."""

    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    action: str

    def __str__(self) -> str:
        return f"{self.model}@{self.alias}: {_v(self.from_version)} -> {_v(self.to_version)}"


@dataclass(frozen=True)
class AliasEvent:
    """One entry of an alias's history."""

    action: str  # set | delete | rollback
    from_version: int | None
    to_version: int | None
    user: str
    timestamp: str
    reason: str | None = None
    id: str = ""  # "<nanoseconds>-<random>": when it was written, unique per event
    undoes: str | None = None  # a rollback names the event it undid
    # A move made by the serving watcher at the end of a rollout: ``user`` is the watcher,
    # this is who started the rollout, as the rollout's tag says (not authenticated).
    requested_by: str | None = None


@dataclass(frozen=True)
class AliasTarget:
    """An alias and the version it points at."""

    model: str
    alias: str
    version: int
    run_id: str | None = None
    source: str = ""


def set_alias(
    model: str | None,
    alias: str,
    version: int | str | None = None,
    *,
    reason: str | None = None,
    authorized: Decision | None = None,
    requested_by: str | None = None,
) -> AliasChange:
    """Point ``model@alias`` at ``version`` (default: the latest version) and record it.

    The policy is checked first (``alias.set``; a blocked version, or an unapproved one where
    the environment requires approval, is refused before anything moves). ``authorized``
    is for the serving watcher finishing a rollout that user was allowed to start: it
    replaces the role check, never the version check; ``requested_by`` then names who
    started the rollout, recorded beside the watcher's own name, never instead of it.
    """
    model = resolve_model_name(model)
    alias = _require_alias(alias)
    decision = authorized or require("alias.set", model=model, alias=alias, to_version=version)
    with registry() as client:
        registered = get_model(client, model)
        current = alias_map(registered).get(alias)
        target = _existing_version(client, model, version)
        if current == target:
            return AliasChange(model, alias, current, target, "unchanged")
        check_deployable(client, model, alias, target, decision)
        change = AliasChange(model, alias, current, target, "set")
        _move_with_record(client, change, reason, registered.tags,
                          lambda: _point_alias(client, model, alias, target), decision=decision,
                          requested_by=requested_by)
    return change


def get_alias(model: str | None, alias: str) -> AliasTarget:
    """The version ``model@alias`` points at, or NotFoundError."""
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        mv = client.get_model_version(model, str(_aliased_version(client, model, alias)))
    return AliasTarget(model, alias, int(mv.version), mv.run_id or None, mv.source or "")


def list_aliases(model: str | None = None) -> list[AliasTarget]:
    """Every alias of one model, or of every model when ``model`` is None."""
    with registry() as client:
        models = [get_model(client, require_name(model, "model name"))] if model is not None else list(
            iter_registered_models(client)
        )
    targets = [AliasTarget(m.name, alias, version) for m in models for alias, version in alias_map(m).items()]
    return sorted(targets, key=lambda t: (t.model, t.alias))


def delete_alias(model: str | None, alias: str, *, reason: str | None = None) -> AliasChange:
    """Remove ``model@alias`` (the version stays) and record it."""
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    decision = require("alias.delete", model=model, alias=alias)
    with registry() as client:
        registered = get_model(client, model)
        version = _aliased_version(client, model, alias, registered)
        change = AliasChange(model, alias, version, None, "delete")
        _move_with_record(client, change, reason, registered.tags,
                          lambda: client.delete_registered_model_alias(model, alias), decision=decision)
    return change


def alias_history(model: str | None, alias: str) -> list[AliasEvent]:
    """Every recorded move of ``model@alias``, oldest first."""
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        return [event for _, event in read_history(get_model(client, model).tags, model, alias)]


def rollback_alias(model: str | None, alias: str, *, reason: str | None = None) -> AliasChange:
    """Move ``model@alias`` back to the version it held before its last recorded move."""
    model = resolve_model_name(model)
    alias = _require_alias(alias)
    decision = require("alias.rollback", model=model, alias=alias)
    with registry() as client:
        registered = get_model(client, model)
        current = alias_map(registered).get(alias)
        history = [event for _, event in read_history(registered.tags, model, alias)]
        undone = _event_to_undo(history)
        if undone is None or undone.from_version is None:
            raise ValidationError(f"{model}@{alias} has no earlier version to roll back to")
        target = _existing_version(client, model, undone.from_version)
        check_deployable(client, model, alias, target, decision)
        change = AliasChange(model, alias, current, target, "rollback")
        _move_with_record(client, change, reason, registered.tags,
                          lambda: _point_alias(client, model, alias, target), undoes=undone.id, decision=decision)
    return change


def _event_to_undo(events: list[AliasEvent]) -> AliasEvent | None:
    """The newest set/delete not yet undone: the undo stack's top.

    A rollback names the event it undid, so two concurrent rollbacks of the same event
    count once; rollbacks from toolkit 0.1 name nothing and pop the top.
    """
    stack: list[AliasEvent] = []
    for event in events:
        if event.action != "rollback":
            stack.append(event)
        elif event.undoes is None:
            if stack:
                stack.pop()
        else:
            stack = [e for e in stack if e.id != event.undoes]
    return stack[-1] if stack else None


def _existing_version(client: MlflowClient, model: str, version: int | str | None) -> int:
    """Validate ``version`` against ``model``; None means its latest version."""
    from mlflow.exceptions import MlflowException

    if version is None:
        latest = latest_version_number(client, model)
        if latest is None:
            raise NotFoundError(f"registered model '{model}' has no versions yet")
        return latest
    number = _parse_version(version)
    try:
        client.get_model_version(model, str(number))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        latest = latest_version_number(client, model)
        hint = f"latest is v{latest}" if latest else "it has no versions"
        raise NotFoundError(f"model '{model}' has no version {number} ({hint})") from None
    return number


def _parse_version(version: int | str) -> int:
    text = str(version).strip().lstrip("vV")
    if not text.isdigit() or int(text) < 1:
        raise ValidationError(f"version must be a positive integer, got {version!r}")
    return int(text)


def read_history(tags: Mapping[str, str], model: str, alias: str) -> list[tuple[str, AliasEvent]]:
    """``(tag key, event)`` pairs of ``model@alias`` from a registered model's tags, oldest first.

    Reads both the per-event tags and a legacy one-list tag; an unreadable entry is skipped
    with a one-line warning naming the tag, so a hand edit never blocks a move.
    """
    prefix = _event_prefix(alias)
    entries: list[tuple[str, AliasEvent]] = []
    for key, raw in tags.items():
        if not key.startswith(prefix):
            continue
        event = _decode_event(model, key, raw, alias)
        if event is not None:
            entries.append((key, replace(event, id=_order(key))))
    entries.extend(_legacy_entries(tags, model, alias))
    return sorted(entries, key=lambda entry: _order(entry[0]))


def _move_with_record(
    client: MlflowClient,
    change: AliasChange,
    reason: str | None,
    tags: Mapping[str, str],
    move: Callable[[], object],
    undoes: str | None = None,
    decision: Decision | None = None,
    requested_by: str | None = None,
) -> None:
    """Write the audit event and the history event, then move; a move never happens without
    its record.

    In prod a failed audit write refuses the move; elsewhere it warns. A failed history write
    raises before anything moved. A failed move takes its history event back (and is audited
    as failed). Pruning and migrating old entries come after the move and only warn.
    """
    action = "alias.rollback" if change.action == "rollback" else f"alias.{change.action}"
    fields = dict(model=change.model, alias=change.alias, from_version=change.from_version,
                  to_version=change.to_version, reason=reason)
    if requested_by:
        fields["requested_by"] = fit(requested_by, USER_MAX_CHARS)
    audit.record(action, "allowed", decision=decision, strict=bool(decision and decision.environment == "prod"),
                 **fields)
    key = _new_event_key(change.alias)
    client.set_registered_model_tag(change.model, key, _encode_event(change, reason, undoes, decision, requested_by))
    try:
        move()
    except BaseException as exc:
        _delete_tags(client, change.model, [key], "take back the event of a failed move")
        audit.record(action, "failed", decision=decision, **{**fields, "error": one_line(exc)})
        raise
    try:
        _migrate_legacy(client, change.model, change.alias, tags)
        _prune(client, change.model, change.alias, {**tags, key: ""})
    except Exception as exc:  # noqa: BLE001 - housekeeping must never fail a move that happened
        log.warning(f"{change} happened; tidying its history failed: {one_line(exc)}")


_CREATION_RACE_MARKERS = ("duplicate key", "unique constraint", "duplicate entry")


def _point_alias(client: MlflowClient, model: str, alias: str, version: int, attempts: int = 3) -> None:
    """Set the alias, retrying when another writer created the same alias a moment before.

    MLflow's SQL store sets an alias as select-then-insert, so two writers setting a new
    alias at once make one of them fail on the table's primary key (PostgreSQL:
    ``UniqueViolation ... registered_model_alias_pk``). The row exists after that, so the
    retry is a plain update. Any other error is raised at once.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(model, alias, str(version))
            return
        except MlflowException as exc:
            message = str(getattr(exc, "message", "") or exc).lower()
            if attempt == attempts - 1 or not any(marker in message for marker in _CREATION_RACE_MARKERS):
                raise
            time.sleep(0.05 + secrets.randbelow(100) / 1000)


def _encode_event(change: AliasChange, reason: str | None, undoes: str | None = None,
                  decision: Decision | None = None, requested_by: str | None = None) -> str:
    event = AliasEvent(
        action=change.action,
        from_version=change.from_version,
        to_version=change.to_version,
        user=fit(decision.user if decision else acting_user(), USER_MAX_CHARS),
        timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        reason=fit(reason, REASON_MAX_CHARS) if reason else None,
        undoes=undoes,
        requested_by=fit(requested_by, USER_MAX_CHARS) if requested_by else None,
    )
    fields = {k: v for k, v in asdict(event).items()
              if k != "id" and (v is not None or k not in ("undoes", "requested_by"))}
    payload = json.dumps({"format": EVENT_FORMAT, "alias": change.alias, **fields}, separators=(",", ":"))
    if len(payload) > REGISTERED_MODEL_TAG_MAX:  # only a very long alias name could get here
        raise ValidationError(f"alias history event for {change} does not fit a registry tag")
    return payload


def _decode_event(model: str, key: str, raw: str | None, alias: str) -> AliasEvent | None:
    try:
        data = json.loads(raw or "")
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if int(data.get("format", 0)) > EVENT_FORMAT:
            _skip(model, key, f"written by a newer toolkit (format {data['format']})")
            return None
        if data.get("alias") != alias:  # a hashed key shared by another alias name
            return None
        return _event_from(data)
    except (ValueError, TypeError, KeyError) as exc:
        _skip(model, key, one_line(exc, 120))
        return None


def _event_from(data: Mapping[str, object]) -> AliasEvent:
    def version(value: object) -> int | None:
        return None if value is None else int(value)  # type: ignore[arg-type]

    action = str(data["action"])
    if action not in ("set", "delete", "rollback"):
        raise ValueError(f"unknown action {action!r}")
    return AliasEvent(
        action=action,
        from_version=version(data.get("from_version")),
        to_version=version(data.get("to_version")),
        user=str(data.get("user") or "unknown"),
        timestamp=str(data["timestamp"]),
        reason=str(data["reason"]) if data.get("reason") else None,
        undoes=str(data["undoes"]) if data.get("undoes") else None,
        requested_by=str(data["requested_by"]) if data.get("requested_by") else None,
    )


def _legacy_entries(tags: Mapping[str, str], model: str, alias: str) -> list[tuple[str, AliasEvent]]:
    """Events from the one-list tag of toolkit 0.1, each under the key it will migrate to."""
    legacy_key = LEGACY_HISTORY_TAG_PREFIX + alias
    raw = tags.get(legacy_key)
    if not raw:
        return []
    try:
        items = json.loads(raw)
        if not isinstance(items, list):
            raise ValueError("not a JSON list")
    except ValueError as exc:
        _skip(model, legacy_key, one_line(exc, 120))
        return []
    entries = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ValueError("not a JSON object")
            event = _event_from(item)
            key = _legacy_event_key(alias, event, index)
            entries.append((key, replace(event, id=_order(key))))
        except (ValueError, TypeError, KeyError) as exc:
            _skip(model, f"{legacy_key}[{index}]", one_line(exc, 120))
    return entries


def _migrate_legacy(client: MlflowClient, model: str, alias: str, tags: Mapping[str, str]) -> None:
    """Copy a legacy list into per-event tags (same keys for every writer), then drop it."""
    legacy_key = LEGACY_HISTORY_TAG_PREFIX + alias
    if legacy_key not in tags:
        return
    for key, event in _legacy_entries(tags, model, alias)[-HISTORY_LIMIT:]:
        if key not in tags:
            change = AliasChange(model, alias, event.from_version, event.to_version, event.action)
            payload = json.loads(_encode_event(change, event.reason, event.undoes))
            payload.update(user=event.user, timestamp=event.timestamp)
            client.set_registered_model_tag(model, key, json.dumps(payload, separators=(",", ":")))
    client.delete_registered_model_tag(model, legacy_key)


def _prune(client: MlflowClient, model: str, alias: str, tags: Mapping[str, str]) -> None:
    """Drop this alias's events beyond the newest HISTORY_LIMIT."""
    prefix = _event_prefix(alias)
    keys = sorted((key for key in tags if key.startswith(prefix)), key=_order)
    _delete_tags(client, model, keys[:-HISTORY_LIMIT], "prune old history events")


def _delete_tags(client: MlflowClient, model: str, keys: list[str], why: str) -> None:
    for key in keys:
        try:
            client.delete_registered_model_tag(model, key)
        except Exception as exc:  # noqa: BLE001 - a concurrent writer may have removed it first
            log.warning(f"could not {why} ({model} tag {key}): {one_line(exc)}")


def _event_prefix(alias: str) -> str:
    """Tag-key prefix of an alias's events; a hash stands in for names too long for a key."""
    prefix = f"{EVENT_TAG_PREFIX}{alias}."
    if len(prefix) + 30 <= TAG_KEY_MAX and alias.isascii():
        return prefix
    return f"{EVENT_TAG_PREFIX}h-{hashlib.sha1(alias.encode()).hexdigest()[:16]}."


def _new_event_key(alias: str) -> str:
    """Sortable by time (nanoseconds, 20 digits) with a random suffix: unique per writer."""
    return f"{_event_prefix(alias)}{time.time_ns():020d}-{secrets.token_hex(4)}"


def _legacy_event_key(alias: str, event: AliasEvent, index: int) -> str:
    try:
        stamp = int(datetime.fromisoformat(event.timestamp).timestamp() * 1e9) + index
    except ValueError:
        stamp = index
    digest = hashlib.sha1(json.dumps(asdict(event), sort_keys=True).encode()).hexdigest()[:8]
    return f"{_event_prefix(alias)}{stamp:020d}-{digest}"


def _order(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _skip(model: str, key: str, why: str) -> None:
    log.warning(f"alias history: skipped unreadable entry {key!r} of '{model}': {why}")


def _require_alias(alias: str | None) -> str:
    """MLflow's alias rules, checked before the history event is written."""
    alias = require_name(alias, "alias")
    if not _ALIAS_RE.match(alias):
        raise ValidationError(
            f"invalid alias name '{alias}': only letters, digits, underscores (_) and dashes (-)"
        )
    if len(alias) > _MLFLOW_ALIAS_MAX:
        raise ValidationError(f"alias name is {len(alias)} characters; MLflow allows {_MLFLOW_ALIAS_MAX}")
    if alias.lower() == "latest":
        raise ValidationError(f"'{alias}' alias name (case insensitive) is reserved by MLflow")
    if _VERSION_ALIAS_RE.match(alias):
        raise ValidationError(f"version alias name '{alias}' is reserved by MLflow (it means version {alias[1:]})")
    return alias


def _aliased_version(
    client: MlflowClient, model: str, alias: str, registered: RegisteredModel | None = None
) -> int:
    """The version ``model@alias`` points at, or NotFoundError listing the aliases there are."""
    aliases = alias_map(registered or get_model(client, model))
    if alias not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise NotFoundError(f"model '{model}' has no alias '{alias}' (aliases: {known})")
    return aliases[alias]


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"
