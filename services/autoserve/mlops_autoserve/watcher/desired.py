"""Desired state: which version every served (model, alias) should route to, and what each
model asks for (replicas, shadows, rollouts), read model by model.

One paged ``search_registered_models`` call per cycle returns every alias and every tag of
every model (MLflow fills ``RegisteredModel.aliases`` and ``.tags`` in search results), so
the cost is one request per 1000 models whatever the number of aliases.

Each model is read on its own (:mod:`modelinputs`): a bad tag is an error on that model and
is ignored; a model that cannot be read at all keeps its last good state. A read of the
registry as a whole fails only when the registry itself cannot be reached; then
:class:`RegistrySource` backs off and the watcher keeps the last :class:`Desired` it had.

:class:`Desired` is frozen: controllers share one per cycle and none of them can change
what another sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.modelinputs import (
    InputError,
    ModelInputs,
    read_model,
    unreadable,
)
from mlops_autoserve.watcher.planner import RouteKey
from mlops_toolkit.aliases import read_history
from mlops_toolkit.approvals import (
    APPROVAL_STATE_TAG,
    APPROVED,
    BLOCKED_TAG,
    serving_refusal,
)
from mlops_toolkit.errors import one_line
from mlops_toolkit.registry import iter_registered_models, iter_versions_matching
from mlops_toolkit.rollout import Rollout
from mlops_toolkit.shadow import Shadow

log = logging.getLogger("autoserve.desired")

REGISTRY_BACKOFF_MAX = 10.0  # seconds between registry reads while it is down: a failed read costs one request

__all__ = ["Desired", "Hold", "RegistryReader", "RegistrySource", "RouteKey"]


@dataclass(frozen=True)
class Hold:
    """Prod: why a route's wanted version may not serve, and what may serve instead."""

    reason: str
    fallbacks: tuple[int, ...] = ()  # approved, unblocked versions from the alias's history, newest first


def _frozen(value: Mapping) -> Mapping:
    return value if isinstance(value, MappingProxyType) else MappingProxyType(dict(value))


@dataclass(frozen=True)
class Desired:
    routes: Mapping[RouteKey, int] = field(default_factory=dict)
    replicas: Mapping[str, int] = field(default_factory=dict)  # models whose tag overrides --replicas
    min_replicas: Mapping[str, int] = field(default_factory=dict)  # models whose tag overrides --min-replicas
    max_replicas: Mapping[str, int] = field(default_factory=dict)  # models whose tag overrides --max-replicas
    shadows: Mapping[RouteKey, Shadow] = field(default_factory=dict)  # (model, mirrored alias) -> its shadow
    rollouts: Mapping[RouteKey, Rollout] = field(default_factory=dict)  # running rollouts, by (model, alias)
    held: Mapping[RouteKey, Hold] = field(default_factory=dict)  # prod: wanted versions that may not serve
    servable: frozenset[tuple[str, int]] = frozenset()  # prod: (model, version) approved and not blocked
    errors: Mapping[str, tuple[InputError, ...]] = field(default_factory=dict)  # per model: inputs ignored

    def __post_init__(self) -> None:
        for name in ("routes", "replicas", "min_replicas", "max_replicas", "shadows", "rollouts", "held", "errors"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    def errors_of(self, model: str, alias: str) -> tuple[InputError, ...]:
        """The input errors shown on ``model@alias``: the model's own and this alias's."""
        return tuple(e for e in self.errors.get(model, ()) if e.alias is None or e.alias == alias)


class RegistryReader:
    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.metrics = metrics
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        self._last_good: dict[str, ModelInputs] = {}  # per model: what its last readable state asked for
        self._histories: dict[RouteKey, tuple[int, ...]] = {}

    def read(self) -> dict[RouteKey, int]:
        """``{(model, alias): version}`` for every alias this watcher serves."""
        return dict(self.read_state().routes)

    def read_state(self) -> Desired:
        """Every model, each parsed alone; raises only when the registry cannot be read."""
        per_model: dict[str, ModelInputs] = {}
        errors: dict[str, tuple[InputError, ...]] = {}
        histories: dict[RouteKey, tuple[int, ...]] = {}
        for model in iter_registered_models(self.client, on_page=self.metrics.registry_requests.inc):
            name = str(model.name)
            try:
                inputs = read_model(model, self.settings.wants)
                if self.settings.environment == "prod":
                    for key in inputs.routes:
                        histories[key] = _history_versions(model.tags or {}, name, key[1])
            except Exception as exc:  # noqa: BLE001 - one model's surprise stays with that model
                last = self._last_good.get(name)
                inputs = last if last is not None else ModelInputs({}, {}, {}, {}, ())
                inputs = ModelInputs(inputs.routes, inputs.rollouts, inputs.shadows, inputs.counts,
                                     (unreadable(name, exc),))
                histories.update({k: v for k, v in self._histories.items() if k[0] == name})
            else:
                self._last_good[name] = inputs
            per_model[name] = inputs
            if inputs.errors:
                errors[name] = inputs.errors
        for gone in set(self._last_good) - set(per_model):
            del self._last_good[gone]
        self._histories = histories
        routes = {k: v for m in per_model.values() for k, v in m.routes.items()}
        counts = {kind: {name: m.counts[kind] for name, m in per_model.items() if kind in m.counts}
                  for kind in ("replicas", "min_replicas", "max_replicas")}
        held: dict[RouteKey, Hold] = {}
        servable: frozenset[tuple[str, int]] = frozenset()
        if self.settings.environment == "prod" and routes:
            held, servable = self._hold_ungoverned(routes, histories)
        return Desired(
            routes=routes, replicas=counts["replicas"], min_replicas=counts["min_replicas"],
            max_replicas=counts["max_replicas"],
            shadows={k: v for m in per_model.values() for k, v in m.shadows.items()},
            rollouts={k: v for m in per_model.values() for k, v in m.rollouts.items()},
            held=held, servable=servable, errors=errors,
        )

    def _hold_ungoverned(self, routes: Mapping[RouteKey, int], histories: Mapping[RouteKey, tuple[int, ...]]
                         ) -> tuple[dict[RouteKey, Hold], frozenset[tuple[str, int]]]:
        """Prod serves approved, unblocked versions only: two tag searches per registry read."""
        def matching(tag: str, value: str) -> set[tuple[str, int]]:
            found = iter_versions_matching(self.client, f"tags.`{tag}` = '{value}'",
                                           on_page=self.metrics.registry_requests.inc)
            return {(v.name, int(v.version)) for v in found}

        approved = matching(APPROVAL_STATE_TAG, APPROVED)
        blocked = matching(BLOCKED_TAG, "true")
        servable = frozenset(approved - blocked)
        held = {}
        for (model, alias), version in routes.items():
            reason = serving_refusal((model, version) in approved, (model, version) in blocked, model, version)
            if reason is not None:
                fallbacks = tuple(v for v in histories.get((model, alias), ()) if (model, v) in servable and v != version)
                held[(model, alias)] = Hold(reason, fallbacks)
        return held, servable


def _history_versions(tags: Mapping[str, str], model: str, alias: str) -> tuple[int, ...]:
    """Versions ``model@alias`` pointed at, newest first, from its recorded history."""
    seen: list[int] = []
    for _, event in reversed(read_history(tags, model, alias)):
        for version in (event.to_version, event.from_version):
            if version is not None and version not in seen:
                seen.append(int(version))
    return tuple(seen)


class RegistrySource:
    """When to read the registry, and what to keep while it cannot be read.

    Reads every ``poll_interval`` or at once when woken (a webhook, a rollout that ended);
    after a failed read it backs off (one request per attempt, at most
    ``max(poll_interval, REGISTRY_BACKOFF_MAX)`` apart) and :attr:`desired` stays the last
    good state, so nothing that serves is touched during an outage.
    """

    def __init__(self, reader: RegistryReader, poll_interval: float) -> None:
        self.reader = reader
        self.poll_interval = poll_interval
        self.desired: Desired | None = None
        self.failures = 0
        self.next_read = 0.0  # monotonic
        self.due = True

    def refresh(self, now: float | None = None) -> bool:
        """Read if due; False when a read was due and failed."""
        now = time.monotonic() if now is None else now
        if not (self.due or now >= self.next_read):
            return True
        self.due = False
        try:
            desired = self.reader.read_state()
        except Exception as exc:  # noqa: BLE001 - any failure to reach or read the registry
            self.failures += 1
            cap = max(self.poll_interval, REGISTRY_BACKOFF_MAX)
            delay = min(self.poll_interval * 2 ** (self.failures - 1), cap)
            self.next_read = now + delay
            log.warning("registry unreachable; serving continues unchanged",
                        extra={"error": one_line(exc), "retry_in_s": round(delay, 1)})
            return False
        if self.failures:
            log.info("registry reachable again", extra={"failed_reads": self.failures})
        self.failures = 0
        self.next_read = now + self.poll_interval
        self.desired = desired
        return True
