"""Read-only views of the model registry: models, versions and their aliases.

``search_registered_models`` returns every alias of every model in one paged call (MLflow
fills ``RegisteredModel.aliases`` in search results), so listing is cheap; ``search_model_versions`` does not fill aliases, so version
aliases are derived from the model's alias map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mlops_toolkit.config import registry, require_name
from mlops_toolkit.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

PAGE_SIZE = 1000


@dataclass(frozen=True)
class ModelSummary:
    name: str
    latest_version: int | None
    aliases: dict[str, int] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class VersionInfo:
    model: str
    version: int
    run_id: str | None
    status: str
    created: str
    source: str
    aliases: list[str] = field(default_factory=list)


def iter_registered_models(
    client: MlflowClient, filter_string: str | None = None, on_page: Callable[[], object] | None = None
) -> Iterator[RegisteredModel]:
    """Every registered model, following page tokens; ``on_page`` is called per request."""
    token = None
    while True:
        page = client.search_registered_models(
            filter_string=filter_string, max_results=PAGE_SIZE, page_token=token
        )
        if on_page is not None:
            on_page()
        yield from page
        token = page.token
        if not token:
            return


def iter_model_versions(client: MlflowClient, model: str) -> Iterator[ModelVersion]:
    """Every version of one model, following page tokens."""
    return iter_versions_matching(client, f"name = {quote_filter_value(model)}")


def iter_versions_matching(client: MlflowClient, filter_string: str,
                           on_page: Callable[[], object] | None = None) -> Iterator[ModelVersion]:
    """Every version (of any model) matching an MLflow search filter, following page tokens."""
    token = None
    while True:
        page = client.search_model_versions(filter_string=filter_string, max_results=PAGE_SIZE, page_token=token)
        if on_page is not None:
            on_page()
        yield from page
        token = page.token
        if not token:
            return


def quote_filter_value(value: str) -> str:
    """Quote a value for an MLflow search filter (names may contain quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValidationError(f"name {value!r} mixes both quote characters; MLflow cannot search it")


def alias_map(model: RegisteredModel) -> dict[str, int]:
    """``{'Production': 3}`` from a registered model, whatever shape MLflow used."""
    raw = model.aliases
    if isinstance(raw, dict):
        return {alias: int(version) for alias, version in raw.items()}
    return {a.alias: int(a.version) for a in raw or []}


def alias_version(client: MlflowClient, model: str, alias: str) -> int | None:
    """The one way to ask which version ``model@alias`` points at: None while the model has no
    such alias; NotFoundError when the model itself does not exist."""
    return alias_map(get_model(client, model)).get(alias)


def latest_version_number(client: MlflowClient, model: str) -> int | None:
    """The highest version number of ``model`` (None if it has no versions)."""
    numbers = [int(v.version) for v in iter_model_versions(client, model)]
    return max(numbers) if numbers else None


def get_model(client: MlflowClient, model: str) -> RegisteredModel:
    """The registered model, or NotFoundError naming it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(f"registered model '{model}' does not exist") from None
        raise


def list_models() -> list[ModelSummary]:
    """Every registered model with its latest version and aliases."""
    with registry() as client:
        summaries = []
        for model in iter_registered_models(client):
            latest = [int(v.version) for v in (model.latest_versions or [])]
            summaries.append(
                ModelSummary(
                    name=model.name,
                    latest_version=max(latest) if latest else None,
                    aliases=alias_map(model),
                    description=model.description or "",
                )
            )
    return sorted(summaries, key=lambda s: s.name)


def list_versions(model: str) -> list[VersionInfo]:
    """Every version of ``model``, newest first, with the aliases that point at it."""
    model = require_name(model, "model name")
    with registry() as client:
        aliases = alias_map(get_model(client, model))
        versions = list(iter_model_versions(client, model))
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    infos = [
        VersionInfo(
            model=model,
            version=int(v.version),
            run_id=v.run_id or None,
            status=v.status,
            created=format_timestamp_ms(v.creation_timestamp),
            source=v.source or "",
            aliases=sorted(by_version.get(int(v.version), [])),
        )
        for v in versions
    ]
    return sorted(infos, key=lambda i: i.version, reverse=True)


def format_timestamp_ms(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
