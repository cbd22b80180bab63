"""Desired state: which version every served (model, alias) should route to, and how many
replicas each model wants.

One paged ``search_registered_models`` call per cycle returns every alias and every tag of
every model (MLflow fills ``RegisteredModel.aliases`` and ``.tags`` in search results), so
the cost is one request per 1000 models whatever the number of aliases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_toolkit.approvals import (
    APPROVAL_STATE_TAG,
    APPROVED,
    BLOCKED_TAG,
    serving_refusal,
)
from mlops_toolkit.registry import (
    alias_map,
    iter_registered_models,
    iter_versions_matching,
)
from mlops_toolkit.rollout import RUNNING, Rollout, rollouts_of
from mlops_toolkit.shadow import Shadow, shadows_of

log = logging.getLogger("autoserve.desired")

RouteKey = tuple[str, str]  # (model, alias)
REPLICAS_TAG = "mlops.autoserve.replicas"  # registered-model tag: replicas of every served version
# Registered-model tags: the autoscaler's floor and ceiling for every served version (override
# --min-replicas/--max-replicas)
MIN_REPLICAS_TAG = "mlops.autoserve.min_replicas"
MAX_REPLICAS_TAG = "mlops.autoserve.max_replicas"
MAX_REPLICAS = 32


@dataclass(frozen=True)
class Desired:
    routes: dict[RouteKey, int] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)  # models whose tag overrides --replicas
    min_replicas: dict[str, int] = field(default_factory=dict)  # models whose tag overrides --min-replicas
    max_replicas: dict[str, int] = field(default_factory=dict)  # models whose tag overrides --max-replicas
    shadows: dict[RouteKey, Shadow] = field(default_factory=dict)  # (model, mirrored alias) -> its shadow
    rollouts: dict[RouteKey, Rollout] = field(default_factory=dict)  # running rollouts, by (model, alias)
    held: dict[RouteKey, str] = field(default_factory=dict)  # prod: wanted versions that may not serve, and why


class RegistryReader:
    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.metrics = metrics
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        self._warned: set[tuple[str, str]] = set()

    def read(self) -> dict[RouteKey, int]:
        """``{(model, alias): version}`` for every alias this watcher serves."""
        return self.read_state().routes

    def read_state(self) -> Desired:
        desired = Desired()
        for model in iter_registered_models(self.client, on_page=self.metrics.registry_requests.inc):
            wanted = False
            for alias, version in alias_map(model).items():
                if self.settings.wants(model.name, alias):
                    desired.routes[(model.name, alias)] = version
                    wanted = True
            for rollout in rollouts_of(model):
                if rollout.state == RUNNING and self.settings.wants(model.name, rollout.alias):
                    desired.rollouts[(model.name, rollout.alias)] = rollout
            for shadow in shadows_of(model):
                if self.settings.wants(model.name, shadow.of) and self.settings.wants(model.name, shadow.alias):
                    desired.shadows[(model.name, shadow.of)] = shadow
            if wanted:
                for tag, counts in ((REPLICAS_TAG, desired.replicas), (MIN_REPLICAS_TAG, desired.min_replicas),
                                    (MAX_REPLICAS_TAG, desired.max_replicas)):
                    raw = (model.tags or {}).get(tag)
                    count = None if raw is None else self._replicas(model.name, tag, raw)
                    if count is not None:
                        counts[model.name] = count
        if self.settings.environment == "prod" and desired.routes:
            self._hold_ungoverned(desired)
        return desired

    def _hold_ungoverned(self, desired: Desired) -> None:
        """Prod serves approved, unblocked versions only: two tag searches per registry read."""
        def matching(tag: str, value: str) -> set[tuple[str, int]]:
            found = iter_versions_matching(self.client, f"tags.`{tag}` = '{value}'",
                                           on_page=self.metrics.registry_requests.inc)
            return {(v.name, int(v.version)) for v in found}

        approved = matching(APPROVAL_STATE_TAG, APPROVED)
        blocked = matching(BLOCKED_TAG, "true")
        for (model, alias), version in desired.routes.items():
            reason = serving_refusal((model, version) in approved, (model, version) in blocked, model, version)
            if reason is not None:
                desired.held[(model, alias)] = reason

    def _replicas(self, model: str, tag: str, raw: str) -> int | None:
        try:
            count = int(raw)
            if not 1 <= count <= MAX_REPLICAS:
                raise ValueError
            return count
        except ValueError:
            if (model, tag, raw) not in self._warned:  # once per bad value, not every cycle
                self._warned.add((model, tag, raw))
                log.warning(f"ignoring tag {tag}={raw!r}: expected a whole number 1-{MAX_REPLICAS}",
                            extra={"model": model})
            return None
