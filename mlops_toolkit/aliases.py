"""Move registered-model aliases and keep a durable, shared history of every move.

The history lives in the registry itself, one JSON tag per alias on the registered model
(``mlops.alias_history.<alias>``), so the CLI, every notebook and the serving watcher read
the same record. It is bounded to the newest :data:`HISTORY_LIMIT` events.

Rollback walks that history like an undo stack: each ``set``/``delete`` pushes the version
it replaced, each ``rollback`` pops one, so repeated rollbacks step further back.
Moves made outside the toolkit (MLflow UI, raw client) are not in the history.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import NotFoundError, ValidationError
from mlops_toolkit.registry import alias_map, get_model, iter_registered_models, latest_version_number

if TYPE_CHECKING:
    from mlflow import MlflowClient

HISTORY_TAG_PREFIX = "mlops.alias_history."
HISTORY_LIMIT = 100
HISTORY_MAX_CHARS = 90_000  # MLflow caps registry tag values at 100,000 characters


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
) -> AliasChange:
    """Point ``model@alias`` at ``version`` (default: the latest version) and record it."""
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        current = alias_map(get_model(client, model)).get(alias)
        target = _existing_version(client, model, version)
        if current == target:
            return AliasChange(model, alias, current, target, "unchanged")
        client.set_registered_model_alias(model, alias, str(target))
        change = AliasChange(model, alias, current, target, "set")
        _record(client, change, reason)
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
    with registry() as client:
        version = _aliased_version(client, model, alias)
        client.delete_registered_model_alias(model, alias)
        change = AliasChange(model, alias, version, None, "delete")
        _record(client, change, reason)
    return change


def alias_history(model: str | None, alias: str) -> list[AliasEvent]:
    """Every recorded move of ``model@alias``, oldest first."""
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        return _read_history(client, model, alias)


def rollback_alias(model: str | None, alias: str, *, reason: str | None = None) -> AliasChange:
    """Move ``model@alias`` back to the version it held before its last recorded move."""
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        current = alias_map(get_model(client, model)).get(alias)
        target = _rollback_target(_read_history(client, model, alias))
        if target is None:
            raise ValidationError(f"{model}@{alias} has no earlier version to roll back to")
        target = _existing_version(client, model, target)
        client.set_registered_model_alias(model, alias, str(target))
        change = AliasChange(model, alias, current, target, "rollback")
        _record(client, change, reason)
    return change


def current_user() -> str:
    """Who to record in the history: MLOPS_USER, else the login name."""
    try:
        return os.environ.get("MLOPS_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _rollback_target(events: list[AliasEvent]) -> int | None:
    stack: list[int | None] = []
    for event in events:
        if event.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(event.from_version)
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


def _history_key(alias: str) -> str:
    return HISTORY_TAG_PREFIX + alias


def _read_history(client: MlflowClient, model: str, alias: str) -> list[AliasEvent]:
    raw = get_model(client, model).tags.get(_history_key(alias))
    if not raw:
        return []
    try:
        return [AliasEvent(**entry) for entry in json.loads(raw)]
    except (ValueError, TypeError):
        raise ValidationError(
            f"alias history tag {_history_key(alias)!r} on '{model}' is not valid JSON; "
            "delete the tag to start a new history"
        ) from None


def _record(client: MlflowClient, change: AliasChange, reason: str | None) -> None:
    """Append one event to the alias's history tag, keeping it within MLflow's limits."""
    events = _read_history(client, change.model, change.alias)
    events.append(
        AliasEvent(
            action=change.action,
            from_version=change.from_version,
            to_version=change.to_version,
            user=current_user(),
            timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            reason=reason or None,
        )
    )
    events = events[-HISTORY_LIMIT:]
    payload = json.dumps([asdict(e) for e in events], separators=(",", ":"))
    while len(payload) > HISTORY_MAX_CHARS and len(events) > 1:
        events = events[1:]
        payload = json.dumps([asdict(e) for e in events], separators=(",", ":"))
    client.set_registered_model_tag(change.model, _history_key(change.alias), payload)


def _aliased_version(client: MlflowClient, model: str, alias: str) -> int:
    """The version ``model@alias`` points at, or NotFoundError listing the aliases there are."""
    aliases = alias_map(get_model(client, model))
    if alias not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise NotFoundError(f"model '{model}' has no alias '{alias}' (aliases: {known})")
    return aliases[alias]


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"
