"""Runs that log in as few requests as possible, and models that register quickly.

``start_run`` wraps MLflow's fluent run, so ``mlflow.log_*`` and autologging keep working
inside the block; the helpers on :class:`Run` batch what MLflow would send one by one.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from mlops_toolkit.config import registry, require_name, resolve_model_name, settings
from mlops_toolkit.contract import CONTRACT_PATH, build_contract
from mlops_toolkit.errors import ValidationError

# MLflow's log_batch limits per request.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100

# Where the toolkit knows how to log a model without MLflow's requirements inference.
_FLAVORS_BY_PACKAGE = {
    "sklearn": "mlflow.sklearn",
    "xgboost": "mlflow.xgboost",
    "lightgbm": "mlflow.lightgbm",
}


@dataclass
class Run:
    """The active run: batch logging and model registration."""

    run_id: str
    experiment_id: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log many params, 100 per request (MLflow's limit)."""
        from mlflow.entities import Param

        items = [Param(str(k), str(v)) for k, v in params.items()]
        with registry() as client:
            for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
                client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log many metrics in one request (1000 per request)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step) for k, v in metrics.items()]
        with registry() as client:
            for chunk in _chunks(items, MAX_METRICS_PER_BATCH):
                client.log_batch(self.run_id, metrics=chunk)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        with registry() as client:
            for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
                client.log_batch(self.run_id, tags=chunk)

    def log_model(
        self,
        model: Any,
        *,
        register_as: str | None = None,
        input_example: Any = None,
        name: str = "model",
        pip_requirements: list[str] | None = None,
        extra_pip_requirements: list[str] | None = None,
        data_hash: str | None = None,
    ) -> int:
        """Log, register and return the new version number of ``model``.

        The signature is inferred from ``input_example`` (predictions included), a data
        contract is stored at ``data_contract/input_schema.json``, and pip requirements are
        pinned from the installed packages instead of MLflow's slow inference subprocess.
        The new version gets its governance tags: owner (the acting user), environment,
        approval state ``pending`` and, when given, ``data_hash`` (the training data's hash).
        """
        import mlflow
        from mlflow.models import infer_signature

        model_name = resolve_model_name(register_as)
        flavor = _flavor_for(model)
        signature = None
        if input_example is not None:
            signature = infer_signature(input_example, model.predict(input_example))
        requirements = pip_requirements or default_pip_requirements(flavor)
        flavor_options = {}
        if flavor.__name__ == "mlflow.sklearn":
            flavor_options["skops_trusted_types"] = own_skops_types(model)
        with registry() as client:
            info = flavor.log_model(
                model,
                name=name,
                signature=signature,
                input_example=input_example,
                pip_requirements=requirements,
                extra_pip_requirements=extra_pip_requirements,
                registered_model_name=model_name,
                await_registration_for=0,
                **flavor_options,
            )
            mlflow.log_dict(build_contract(input_example, signature), CONTRACT_PATH, run_id=self.run_id)
            if info.registered_model_version is None:
                raise ValidationError(f"MLflow did not register '{model_name}'")
            version = int(info.registered_model_version)
            _governance_tags(client, model_name, version, data_hash)
        return version


def _governance_tags(client: Any, model: str, version: int, data_hash: str | None) -> None:
    from mlops_toolkit.approvals import (
        APPROVAL_STATE_TAG,
        DATA_HASH_TAG,
        ENVIRONMENT_TAG,
        OWNER_TAG,
        PENDING,
    )
    from mlops_toolkit.governance import acting_user, environment

    tags = {OWNER_TAG: acting_user(), ENVIRONMENT_TAG: environment(), APPROVAL_STATE_TAG: PENDING}
    if data_hash:
        tags[DATA_HASH_TAG] = data_hash
    for key, value in tags.items():
        client.set_model_version_tag(model, str(version), key, value)


@contextlib.contextmanager
def start_run(
    name: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    experiment: str | None = None,
) -> Iterator[Run]:
    """Open a run (in ``experiment`` or the configured one), log ``params`` in a batch.

    The run ends FINISHED when the block exits normally and FAILED on an exception.
    """
    import mlflow

    experiment_name = experiment or settings().experiment
    with registry():
        experiment_id = _experiment_id(require_name(experiment_name, "experiment name")) if experiment_name else None
        active = mlflow.start_run(run_name=name, experiment_id=experiment_id, tags=dict(tags or {}) or None)
    with active:
        run = Run(run_id=active.info.run_id, experiment_id=active.info.experiment_id)
        if params:
            run.log_params(params)
        yield run


def default_pip_requirements(flavor: ModuleType) -> list[str]:
    """Pinned requirements for ``flavor`` from what is installed (no subprocess)."""
    import numpy

    if flavor.__name__ == "mlflow.sklearn":
        reqs = flavor.get_default_pip_requirements(include_cloudpickle=True, include_skops=True)
    else:
        reqs = list(flavor.get_default_pip_requirements())
    return [*reqs, f"numpy=={numpy.__version__}"]


def own_skops_types(model: Any) -> list[str]:
    """The types skops would refuse to load for ``model`` (e.g. a tree's ``Tree``).

    MLflow 3.17 stores sklearn models with skops, which loads only trusted types. The user
    is logging a model they just trained, so its own types are the ones to trust.
    """
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


_experiment_ids: dict[tuple[str, str], str] = {}


def _experiment_id(name: str) -> str:
    """Resolve (or create) an experiment once per process and server: it costs requests."""
    import mlflow

    key = (settings().tracking_uri, name)
    if key not in _experiment_ids:
        _experiment_ids[key] = mlflow.set_experiment(name).experiment_id
    return _experiment_ids[key]


def _flavor_for(model: Any) -> ModuleType:
    package = type(model).__module__.split(".")[0]
    module_name = _FLAVORS_BY_PACKAGE.get(package)
    if module_name is None:
        supported = ", ".join(sorted(_FLAVORS_BY_PACKAGE))
        raise ValidationError(
            f"cannot log a {type(model).__qualname__} from '{package}': supported packages are "
            f"{supported}; use mlflow.<flavor>.log_model for others"
        )
    return importlib.import_module(module_name)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = ["Run", "start_run", "default_pip_requirements"]
