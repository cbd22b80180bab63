"""mlops_toolkit: log MLflow runs and models, move registry aliases, from a notebook or a script.

    import mlops_toolkit as mt
    mt.configure()   # MLFLOW_TRACKING_URI, MLOPS_EXPERIMENT, MLOPS_MODEL_NAME
    with mt.start_run("logreg", params={"C": 1.0}) as run:
        run.log_metrics({"val_f1": 0.93})
        version = run.log_model(model, register_as="iris", input_example=X[:5])
    mt.set_alias("iris", "Production", version)
    mt.promote_best("iris", metric="val_f1", alias="Production")
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from mlops_toolkit.aliases import (
    AliasChange,
    AliasEvent,
    AliasTarget,
    alias_history,
    delete_alias,
    get_alias,
    list_aliases,
    rollback_alias,
    set_alias,
)
from mlops_toolkit.config import Settings, configure, settings
from mlops_toolkit.errors import (
    MlopsError,
    NotFoundError,
    TrackingUnavailableError,
    ValidationError,
)
from mlops_toolkit.jsonlog import configure_json_logging
from mlops_toolkit.promotion import PromotionDecision, promote_best
from mlops_toolkit.registry import ModelSummary, VersionInfo, list_models, list_versions
from mlops_toolkit.rollout import Rollout, abort_rollout, rollout_status, start_rollout
from mlops_toolkit.runs import Run, start_run
from mlops_toolkit.shadow import Shadow, clear_shadow, list_shadows, set_shadow

try:
    __version__ = _version("mlops-toolkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = [
    "AliasChange",
    "AliasEvent",
    "AliasTarget",
    "MlopsError",
    "ModelSummary",
    "NotFoundError",
    "PromotionDecision",
    "Rollout",
    "Run",
    "Settings",
    "Shadow",
    "TrackingUnavailableError",
    "ValidationError",
    "VersionInfo",
    "__version__",
    "abort_rollout",
    "alias_history",
    "clear_shadow",
    "configure",
    "configure_json_logging",
    "delete_alias",
    "get_alias",
    "list_aliases",
    "list_models",
    "list_shadows",
    "list_versions",
    "promote_best",
    "rollback_alias",
    "rollout_status",
    "set_alias",
    "set_shadow",
    "settings",
    "start_rollout",
    "start_run",
]
