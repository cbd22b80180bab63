"""One registered model's serving inputs, read from its own tags and checked for it alone.

Any registry writer can set a tag, and a hand edit can leave anything in one. So every
per-model input (rollouts, shadows, replica counts) is parsed here, one model at a time,
and a bad value never raises: it becomes an :class:`InputError` on that model (and the
alias it concerns), the input is ignored, and the model is served as its aliases say. The
watcher shows the error on the model's routes and in ``autoserve_model_errors``; every other
model converges in the same cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlops_autoserve.watcher.planner import RouteKey
from mlops_toolkit.registry import alias_map
from mlops_toolkit.rollout import ROLLOUT_TAG_PREFIX, RUNNING, Rollout, parse_rollout
from mlops_toolkit.shadow import SHADOW_TAG_PREFIX, Shadow, parse_shadow
from mlops_toolkit.tags import fit

if TYPE_CHECKING:
    from mlflow.entities.model_registry import RegisteredModel

REPLICAS_TAG = "mlops.autoserve.replicas"  # registered-model tag: replicas of every served version
# Registered-model tags: the autoscaler's floor and ceiling for every served version (override
# --min-replicas/--max-replicas)
MIN_REPLICAS_TAG = "mlops.autoserve.min_replicas"
MAX_REPLICAS_TAG = "mlops.autoserve.max_replicas"
MAX_REPLICAS = 32
DETAIL_MAX = 300  # characters of an error's text: a huge tag value is never echoed whole


@dataclass(frozen=True)
class InputError:
    """A per-model input the watcher could not use: shown on the model's routes, ignored."""

    model: str
    kind: str  # a short fixed word (a metric label): rollout, shadow, replicas, min_replicas, max_replicas, model
    tag: str  # the tag it came from ("" for the model as a whole)
    detail: str  # what is wrong, in one line
    digest: str  # of the raw value: a new value of the same tag is logged again, the same one is not
    alias: str | None = None  # the alias it concerns, when it concerns one

    def __str__(self) -> str:
        where = f"tag {self.tag}" if self.tag else "model"
        return fit(f"{where}: {self.detail}", DETAIL_MAX)


@dataclass(frozen=True)
class ModelInputs:
    """What one model asks of the watcher (its bad inputs left out, and listed)."""

    routes: dict[RouteKey, int]
    rollouts: dict[RouteKey, Rollout]
    shadows: dict[RouteKey, Shadow]
    counts: dict[str, int]  # replicas / min_replicas / max_replicas from its tags
    errors: tuple[InputError, ...]


def read_model(model: RegisteredModel, wants: Callable[[str, str], bool]) -> ModelInputs:
    """Parse one model's aliases and tags; never raises for a bad tag value."""
    name = model.name
    tags = dict(model.tags or {})
    errors: list[InputError] = []
    routes = {(name, alias): version for alias, version in alias_map(model).items() if wants(name, alias)}
    rollouts: dict[RouteKey, Rollout] = {}
    shadows: dict[RouteKey, Shadow] = {}
    counts: dict[str, int] = {}
    for tag, raw in tags.items():
        if tag.startswith(ROLLOUT_TAG_PREFIX):
            alias = tag[len(ROLLOUT_TAG_PREFIX):]
            if not wants(name, alias):
                continue
            try:
                rollout = parse_rollout(name, alias, raw)
            except ValueError as exc:
                errors.append(_error(name, "rollout", tag, raw, str(exc), alias))
                continue
            if rollout.state == RUNNING:
                rollouts[(name, alias)] = rollout
        elif tag.startswith(SHADOW_TAG_PREFIX):
            of = tag[len(SHADOW_TAG_PREFIX):]
            try:
                shadow = parse_shadow(name, of, raw)
            except ValueError as exc:
                errors.append(_error(name, "shadow", tag, raw, str(exc), of))
                continue
            if wants(name, shadow.of) and wants(name, shadow.alias):
                shadows[(name, of)] = shadow
    if routes:
        for kind, tag in (("replicas", REPLICAS_TAG), ("min_replicas", MIN_REPLICAS_TAG),
                          ("max_replicas", MAX_REPLICAS_TAG)):
            raw = tags.get(tag)
            if raw is None:
                continue
            try:
                counts[kind] = parse_count(raw)
            except ValueError as exc:
                errors.append(_error(name, kind, tag, raw, str(exc)))
        low, high = counts.get("min_replicas"), counts.get("max_replicas")
        if low is not None and high is not None and low > high:
            errors.append(_error(name, "max_replicas", MAX_REPLICAS_TAG, tags[MAX_REPLICAS_TAG],
                                 f"{high} is below {MIN_REPLICAS_TAG}={low}: both ignored"))
            del counts["min_replicas"], counts["max_replicas"]
    return ModelInputs(routes, rollouts, shadows, counts, tuple(errors))


def unreadable(name: str, exc: BaseException) -> InputError:
    """The whole model could not be read (something no parser foresaw): its last good state is kept."""
    text = f"{type(exc).__name__}: {exc}"
    return _error(name, "model", "", text, f"could not be read, its last good state is kept ({text})")


def parse_count(raw: str) -> int:
    """A replica count tag: a whole number 1-MAX_REPLICAS (``"3"``; not ``"3.5"``, ``"-1"``, ``"1e9"``)."""
    text = raw.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_REPLICAS:
        raise ValueError(f"expected a whole number 1-{MAX_REPLICAS}, got {_shown(raw)}")
    return int(text)


def _error(model: str, kind: str, tag: str, raw: str, detail: str, alias: str | None = None) -> InputError:
    digest = hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:16]
    return InputError(model, kind, tag, fit(detail, DETAIL_MAX), digest, alias)


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")
