"""Desired state: which version every served (model, alias) should route to.

One paged ``search_registered_models`` call per cycle returns every alias of every model
(FACTS), so the cost is one request per 1000 models whatever the number of aliases.
"""

from __future__ import annotations

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_toolkit.registry import alias_map, iter_registered_models

RouteKey = tuple[str, str]  # (model, alias)


class RegistryReader:
    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics) -> None:
        from mlflow import MlflowClient

        self.settings = settings
        self.metrics = metrics
        self.client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)

    def read(self) -> dict[RouteKey, int]:
        """``{(model, alias): version}`` for every alias this watcher serves."""
        desired = {}
        for model in iter_registered_models(self.client, on_page=self.metrics.registry_requests.inc):
            for alias, version in alias_map(model).items():
                if self.settings.wants(model.name, alias):
                    desired[(model.name, alias)] = version
        return desired
