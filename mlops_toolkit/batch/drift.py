"""Data drift: recent inputs vs the training reference, per feature.

A two-sample Kolmogorov-Smirnov test per numeric feature plus a content hash of each data
set. Results go to MLflow (a run in the ``model-monitoring`` experiment) and, when a
Pushgateway is configured, to Prometheus as ``model_drift_ks_statistic{model,feature,source}``,
``model_drift_p_value{model,feature,source}``, ``model_drift_detected{model,source}`` and
``batch_predictions_rows{model}``. ``source`` says which inputs were checked: ``batch`` (the
app-db's input table) or ``live`` (the gateway's payload log of real requests).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from mlops_toolkit.errors import ValidationError

DEFAULT_ALPHA = 0.01


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    statistic: float
    p_value: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    features: list[FeatureDrift]
    alpha: float
    reference_rows: int
    current_rows: int
    reference_hash: str
    current_hash: str
    drifted_features: list[str] = field(default_factory=list)

    @property
    def drift_detected(self) -> bool:
        return bool(self.drifted_features)


def data_hash(frame: pd.DataFrame) -> str:
    """A content hash that ignores row order and index: same data, same hash."""
    canonical = frame.reindex(sorted(frame.columns), axis=1).sort_values(sorted(frame.columns)).to_csv(index=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def detect_drift(reference: pd.DataFrame, current: pd.DataFrame, alpha: float = DEFAULT_ALPHA) -> DriftReport:
    """KS test per feature the two frames share; drifted where p < ``alpha``."""
    from scipy.stats import ks_2samp

    if current.empty:
        raise ValidationError("no recent input rows to compare: load batches first")
    if reference.empty:
        raise ValidationError("the training reference is empty")
    shared = [c for c in reference.columns if c in current.columns and pd.api.types.is_numeric_dtype(reference[c])]
    if not shared:
        raise ValidationError("reference and current data share no numeric feature")
    results = []
    for feature in shared:
        test = ks_2samp(reference[feature].dropna(), current[feature].dropna())
        results.append(FeatureDrift(feature, float(test.statistic), float(test.pvalue), bool(test.pvalue < alpha)))
    return DriftReport(
        features=results, alpha=alpha, reference_rows=len(reference), current_rows=len(current),
        reference_hash=data_hash(reference[shared]), current_hash=data_hash(current[shared]),
        drifted_features=[r.feature for r in results if r.drifted],
    )


def log_to_mlflow(report: DriftReport, model: str, experiment: str = "model-monitoring", source: str = "batch") -> str:
    """One run per check: metrics per feature, hashes and verdict as tags; returns the run id."""
    from mlops_toolkit.runs import start_run
    from mlops_toolkit.tags import RUN_TAG_MAX, fit

    metrics = {"drift_detected": float(report.drift_detected), "current_rows": float(report.current_rows)}
    for r in report.features:
        key = _metric_key(r.feature)
        metrics[f"ks_statistic.{key}"] = r.statistic
        metrics[f"p_value.{key}"] = r.p_value
    tags = {"mlops.model": model, "mlops.reference_hash": report.reference_hash,
            "mlops.current_hash": report.current_hash, "mlops.drifted_features": fit(",".join(report.drifted_features), RUN_TAG_MAX),
            "mlops.drift_source": source}
    with start_run(f"drift-{model}" + ("" if source == "batch" else f"-{source}"), params={"alpha": report.alpha}, tags=tags, experiment=experiment) as run:
        run.log_metrics(metrics)
    return run.run_id


def push_to_gateway(report: DriftReport, model: str, gateway: str, prediction_rows: int | None = None,
                    source: str = "batch") -> None:
    """Push the drift gauges for ``model`` to a Prometheus Pushgateway (job ``model_monitoring``).

    Each source is its own group (``model``, ``source``): a push replaces its whole group, so
    the live check and the batch check never erase each other's figures.
    """
    from prometheus_client import CollectorRegistry, Gauge
    from prometheus_client import push_to_gateway as push

    registry = CollectorRegistry()
    ks = Gauge("model_drift_ks_statistic", "KS statistic, recent inputs vs training reference",
               ["model", "feature", "source"], registry=registry)
    p = Gauge("model_drift_p_value", "KS test p-value", ["model", "feature", "source"], registry=registry)
    detected = Gauge("model_drift_detected", "1 if any feature drifted", ["model", "source"], registry=registry)
    for r in report.features:
        ks.labels(model, r.feature, source).set(r.statistic)
        p.labels(model, r.feature, source).set(r.p_value)
    detected.labels(model, source).set(1.0 if report.drift_detected else 0.0)
    if prediction_rows is not None:
        rows = Gauge("batch_predictions_rows", "Rows scored by the last batch inference", ["model"], registry=registry)
        rows.labels(model).set(prediction_rows)
    push(gateway, job="model_monitoring", registry=registry, grouping_key={"model": model, "source": source},
         timeout=10)


def _metric_key(feature: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in feature).strip("_")
