"""Shadow traffic, set from a notebook or the CLI: "send a copy of Production's requests to
the challenger and compare the answers", without the callers ever waiting for the copy.

A shadow is stored in the registry, one tag per mirrored alias on the registered model
(``mlops.shadow.<of-alias>``, a small JSON object), so the serving watcher reads it in the
same paged search that gives it every alias. The gateway sends the copies after answering
the caller and counts agreement (classification) or the mean absolute difference
(regression); see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlops_toolkit import audit
from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import NotFoundError, ValidationError
from mlops_toolkit.governance import require
from mlops_toolkit.registry import alias_map, get_model, iter_registered_models
from mlops_toolkit.tags import json_object

if TYPE_CHECKING:
    from mlflow.entities.model_registry import RegisteredModel

SHADOW_TAG_PREFIX = "mlops.shadow."
COMPARISONS = ("auto", "classification", "regression")


@dataclass(frozen=True)
class Shadow:
    """``percent`` of ``model@of``'s requests are copied to ``model@alias``."""

    model: str
    of: str
    alias: str
    percent: float = 100.0
    compare: str = "auto"  # auto: classification when both answers hold only labels, else regression

    def __str__(self) -> str:
        return f"{self.model}@{self.alias} shadows {self.model}@{self.of} ({self.percent:g}% of requests, {self.compare})"


def set_shadow(model: str | None, alias: str, of: str = "Production", *, percent: float = 100.0,
               compare: str = "auto") -> Shadow:
    """Copy ``percent`` of ``model@of``'s traffic to ``model@alias`` (both aliases must exist)."""
    model = resolve_model_name(model)
    alias, of = require_name(alias, "alias"), require_name(of, "alias")
    if alias == of:
        raise ValidationError(f"an alias cannot shadow itself ({alias})")
    if not 0 < float(percent) <= 100:
        raise ValidationError(f"percent must be above 0 and at most 100, got {percent:g}")
    if compare not in COMPARISONS:
        raise ValidationError(f"compare must be one of {', '.join(COMPARISONS)}, got {compare!r}")
    shadow = Shadow(model, of, alias, float(percent), compare)
    decision = require("shadow.set", model=model, alias=alias)
    with registry() as client:
        aliases = alias_map(get_model(client, model))
        missing = [a for a in (of, alias) if a not in aliases]
        if missing:
            known = ", ".join(sorted(aliases)) or "none"
            raise NotFoundError(f"model '{model}' has no alias {', '.join(repr(a) for a in missing)} (aliases: {known})")
        audit.record("shadow.set", decision=decision, model=model, alias=alias, version=aliases[alias],
                     reason=f"shadow of {of} at {shadow.percent:g}%")
        client.set_registered_model_tag(model, SHADOW_TAG_PREFIX + of, json.dumps(
            {"alias": alias, "percent": shadow.percent, "compare": compare}, separators=(",", ":")))
    return shadow


def clear_shadow(model: str | None, of: str = "Production") -> Shadow:
    """Stop copying ``model@of``'s traffic; NotFoundError when there was no shadow."""
    model = resolve_model_name(model)
    of = require_name(of, "alias")
    decision = require("shadow.clear", model=model)
    with registry() as client:
        current = {s.of: s for s in shadows_of(get_model(client, model))}.get(of)
        if current is None:
            raise NotFoundError(f"{model}@{of} has no shadow")
        audit.record("shadow.clear", decision=decision, model=model, alias=current.alias, reason=f"shadow of {of}")
        client.delete_registered_model_tag(model, SHADOW_TAG_PREFIX + of)
    return current


def list_shadows(model: str | None = None) -> list[Shadow]:
    """Every shadow of one model, or of every model."""
    with registry() as client:
        models = [get_model(client, require_name(model, "model name"))] if model is not None else list(
            iter_registered_models(client))
    return sorted((s for m in models for s in shadows_of(m)), key=lambda s: (s.model, s.of))


def shadows_of(model: RegisteredModel) -> list[Shadow]:
    """The readable shadows in a registered model's tags (a damaged tag is skipped)."""
    found = []
    for key, raw in (model.tags or {}).items():
        if key.startswith(SHADOW_TAG_PREFIX):
            try:
                found.append(parse_shadow(model.name, key[len(SHADOW_TAG_PREFIX):], raw))
            except ValueError:
                continue
    return found


def parse_shadow(model: str, of: str, raw: str) -> Shadow:
    """A shadow tag (``{"alias": "challenger", "percent": 10, "compare": "auto"}``), checked
    field by field: ValueError says what is wrong (anyone who can write tags can write it)."""
    data = json_object(raw)
    alias, percent, compare = data.get("alias"), data.get("percent", 100.0), data.get("compare", "auto")
    if not isinstance(alias, str) or not alias.strip() or len(alias) > 256:
        raise ValueError("alias must be an alias name")
    if alias == of:
        raise ValueError("an alias cannot shadow itself")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent) \
            or not 0 < percent <= 100:
        raise ValueError("percent must be a number above 0 and at most 100")
    if compare not in COMPARISONS:
        raise ValueError(f"compare must be one of {', '.join(COMPARISONS)}")
    return Shadow(model, of, alias, float(percent), compare)


__all__ = ["COMPARISONS", "SHADOW_TAG_PREFIX", "Shadow", "clear_shadow", "list_shadows", "parse_shadow", "set_shadow",
           "shadows_of"]
