"""Scheduled batch jobs: load a day's data, score it with the Production model, retrain.

Airflow DAGs in ``dags/`` call these functions and nothing else, so every step is tested
here without a scheduler. Each job is idempotent for its logical date.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine

from mlops_toolkit.aliases import get_alias
from mlops_toolkit.approvals import check_servable
from mlops_toolkit.batch.appdb import (
    count_rows,
    input_rows,
    migrate,
    predictions,
    read_payloads,
    replace_for_date,
)
from mlops_toolkit.batch.training import (
    GateResult,
    champion_challenger,
    train_candidates,
)
from mlops_toolkit.config import registry
from mlops_toolkit.errors import NotFoundError, ValidationError
from mlops_toolkit.governance import environment
from mlops_toolkit.registry import alias_version as registry_alias_version
from mlops_toolkit.tags import RUN_TAG_MAX, fit

log = logging.getLogger("mlops.batch")

ROWS_PER_BATCH = 30
REFERENCE_ARTIFACT = "data_contract/reference.csv"


def demo_dataset() -> pd.DataFrame:
    """Iris (ships with scikit-learn), shuffled once with a fixed seed: features + label."""
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True, as_frame=True)
    return X.assign(label=y).sample(frac=1.0, random_state=7).reset_index(drop=True)


def load_batch(engine: Engine, logical_date: dt.date, rows_per_batch: int = ROWS_PER_BATCH) -> int:
    """Store the demo data set's batch for ``logical_date`` (batches cycle through the data)."""
    migrate(engine)
    data = demo_dataset()
    batches = max(1, len(data) // rows_per_batch)
    start = (logical_date.toordinal() % batches) * rows_per_batch
    batch = data.iloc[start : start + rows_per_batch]
    rows = [
        {"row_index": i, "features": {k: float(v) for k, v in row.drop("label").items()}, "label": int(row["label"])}
        for i, (_, row) in enumerate(batch.iterrows())
    ]
    count = replace_for_date(engine, input_rows, logical_date, rows)
    log.info("batch loaded", extra={"logical_date": logical_date.isoformat(), "rows": count})
    return count


def read_batch(engine: Engine, since: dt.date, until: dt.date | None = None) -> pd.DataFrame:
    """Input rows from ``since`` to ``until`` (inclusive) as features + label + keys."""
    until = until or since
    query = (
        select(input_rows.c.batch_date, input_rows.c.row_index, input_rows.c.features, input_rows.c.label)
        .where(input_rows.c.batch_date >= since, input_rows.c.batch_date <= until)
        .order_by(input_rows.c.batch_date, input_rows.c.row_index)
    )
    with engine.connect() as connection:
        records = connection.execute(query).all()
    if not records:
        return pd.DataFrame()
    features = pd.DataFrame([r.features if isinstance(r.features, dict) else json.loads(r.features) for r in records])
    return features.assign(label=[r.label for r in records], batch_date=[r.batch_date for r in records],
                           row_index=[r.row_index for r in records])


def alias_version(model: str, alias: str) -> int | None:
    """The version ``model@alias`` points at, or None while there is none (sensors poke this)."""
    try:
        with registry() as client:
            return registry_alias_version(client, model, alias)
    except NotFoundError:  # no such model yet: train first
        return None


@dataclass(frozen=True)
class ScoreResult:
    rows: int
    model: str
    alias: str
    version: int
    run_id: str | None


def score_batch(engine: Engine, logical_date: dt.date, model: str, alias: str = "Production",
                version: int | None = None) -> ScoreResult:
    """Predict the day's batch with one version of ``model``: ``version`` when given (what the
    DAG's sensor found, even if the alias moved since), else the one ``alias`` points at now.
    Replaces that day's predictions. In prod a version that is not approved, or is blocked,
    is refused (PolicyRefusal) before anything is written."""
    import mlflow

    migrate(engine)
    batch = read_batch(engine, logical_date)
    if batch.empty:
        raise ValidationError(f"no input rows for {logical_date}: run dag_data_load for that date first")
    with registry() as client:
        if version is None:
            version = get_alias(model, alias).version  # resolved once: every row gets the same version
        check_servable(client, model, version, environment())  # prod scores approved, unblocked versions only
        run_id = client.get_model_version(model, str(version)).run_id or None
        loaded = mlflow.pyfunc.load_model(f"models:/{model}/{version}")
    feature_names = [spec.name for spec in loaded.metadata.get_input_schema().inputs]
    predicted = loaded.predict(batch[feature_names])
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        {"row_index": int(i), "model_name": model, "alias": alias, "model_version": version,
         "run_id": run_id, "prediction": float(p), "created_at": now}
        for i, p in zip(batch["row_index"], predicted, strict=True)
    ]
    count = replace_for_date(engine, predictions, logical_date, rows, model_name=model, alias=alias)
    log.info("batch scored", extra={"logical_date": logical_date.isoformat(), "rows": count, "model": model,
                                    "alias": alias, "version": version})
    return ScoreResult(count, model, alias, version, run_id)


def train_from_appdb(engine: Engine, model: str, min_rows: int = 60) -> GateResult:
    """Retrain on everything in the app-db (or the demo data set while it holds too little),
    register the candidates, and move Production only through the champion/challenger gate.
    The decision is recorded on every candidate's run and in the alias history."""
    from sklearn.model_selection import train_test_split

    migrate(engine)
    data = read_batch(engine, dt.date.min, dt.date.max)
    source = "app-db"
    if len(data) < min_rows:
        data, source = demo_dataset(), "demo data set"
    features = data.drop(columns=[c for c in ("label", "batch_date", "row_index") if c in data])
    X_train, X_val, y_train, y_val = train_test_split(features, data["label"], test_size=0.3, stratify=data["label"],
                                                      random_state=42)
    candidates = train_candidates(X_train, X_val, y_train, y_val, register_as=model)
    gate = champion_challenger(model, candidates)
    champion = gate.decision.candidate_version if gate.decision.promoted else gate.decision.current_version
    with registry() as client:
        for candidate in candidates:
            run_id = client.get_model_version(model, str(candidate.version)).run_id
            role = "champion" if candidate.version == champion else (
                "challenger" if gate.challenger and gate.challenger.to_version == candidate.version else "not promoted")
            client.set_tag(run_id, "mlops.gate.role", role)
            client.set_tag(run_id, "mlops.gate.decision", fit(str(gate.decision), RUN_TAG_MAX))
            client.set_tag(run_id, "mlops.training_data", f"{source}, {len(X_train)} rows")
            client.log_text(run_id, X_train.to_csv(index=False), REFERENCE_ARTIFACT)
    log.info("training done", extra={"model": model, "decision": str(gate.decision), "source": source})
    return gate


def reference_data(model: str, alias: str = "Production") -> pd.DataFrame:
    """The training data of the version ``model@alias`` points at (logged by training)."""
    import io
    import tempfile

    target = get_alias(model, alias)
    with registry() as client, tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(target.run_id, REFERENCE_ARTIFACT, tmp)
        return pd.read_csv(io.StringIO(open(path).read()))


def monitor(engine: Engine, logical_date: dt.date, model: str, window_days: int = 7,
            pushgateway: str | None = None, alpha: float | None = None):
    """Drift of the last ``window_days`` of inputs vs the Production model's training data:
    logged to MLflow and, with ``pushgateway``, pushed to Prometheus."""
    from mlops_toolkit.batch import drift

    migrate(engine)
    current = read_batch(engine, logical_date - dt.timedelta(days=window_days - 1), logical_date)
    if current.empty:
        raise ValidationError(f"no input rows between {logical_date - dt.timedelta(days=window_days - 1)} and "
                              f"{logical_date}: run dag_data_load first")
    reference = reference_data(model)
    features = current.drop(columns=["label", "batch_date", "row_index"])
    report = drift.detect_drift(reference, features, **({"alpha": alpha} if alpha is not None else {}))
    drift.log_to_mlflow(report, model)
    scored = count_rows(engine, predictions, batch_date=logical_date, model_name=model)
    if pushgateway:
        drift.push_to_gateway(report, model, pushgateway, prediction_rows=scored)
    log.info("drift checked", extra={"model": model, "drift_detected": report.drift_detected,
                                     "drifted": report.drifted_features, "rows": len(features), "source": "batch"})
    return report


def monitor_live(engine: Engine, logical_date: dt.date, model: str, window_days: int = 7,
                 pushgateway: str | None = None, alpha: float | None = None, min_rows: int = 30):
    """Drift of what callers sent the gateway (its payload log) over the last ``window_days``
    up to the end of ``logical_date``, vs the Production model's training data; pushed with
    ``source="live"``. None, with the reason logged, when too few live rows were logged
    (payload logging is off by default): that is not a failure of the check."""
    from mlops_toolkit.batch import drift
    from mlops_toolkit.batch.payloads import live_inputs

    migrate(engine)
    end = dt.datetime.combine(logical_date + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
    start = end - dt.timedelta(days=window_days)
    reference = reference_data(model)
    live = live_inputs(read_payloads(engine, model, start, end), list(reference.columns))
    if len(live.frame) < min_rows:
        log.info("live drift not checked: too few logged rows", extra={
            "model": model, "rows": len(live.frame), "min_rows": min_rows, "requests": live.requests,
            "skipped": live.skipped, "source": "live"})
        return None
    report = drift.detect_drift(reference, live.frame, **({"alpha": alpha} if alpha is not None else {}))
    drift.log_to_mlflow(report, model, source="live")
    if pushgateway:
        drift.push_to_gateway(report, model, pushgateway, source="live")
    log.info("drift checked", extra={"model": model, "drift_detected": report.drift_detected,
                                     "drifted": report.drifted_features, "rows": len(live.frame),
                                     "requests": live.requests, "skipped": live.skipped, "source": "live"})
    return report
