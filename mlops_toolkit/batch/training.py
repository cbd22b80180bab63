"""Train candidate models, log them with the toolkit, and pick champion and challenger.

Shared by ``mlops demo`` and the scheduled training DAG, so both register models the
same way: params, validation metrics, data contract, pinned requirements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops_toolkit.aliases import AliasChange, set_alias
from mlops_toolkit.batch.drift import data_hash
from mlops_toolkit.promotion import PromotionDecision, promote_best
from mlops_toolkit.runs import start_run

METRIC = "val_f1"


@dataclass(frozen=True)
class Candidate:
    name: str
    version: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class GateResult:
    decision: PromotionDecision
    challenger: AliasChange | None


def default_candidates() -> dict[str, Callable[[], Any]]:
    """Small, fast, deterministic scikit-learn models."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    return {
        "logreg": lambda: LogisticRegression(C=1.0, max_iter=500),
        "random-forest": lambda: RandomForestClassifier(n_estimators=50, max_depth=4, random_state=0),
        "decision-tree": lambda: DecisionTreeClassifier(max_depth=2, random_state=0),
    }


def load_iris_split(random_state: int = 42):
    """Iris ships with scikit-learn: no download. Stratified 70/30 split as DataFrames."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    X, y = load_iris(return_X_y=True, as_frame=True)
    return train_test_split(X, y, test_size=0.3, stratify=y, random_state=random_state)


def train_candidates(
    X_train, X_val, y_train, y_val, register_as: str,
    candidates: dict[str, Callable[[], Any]] | None = None,
    on_trained: Callable[[Candidate], None] | None = None,
) -> list[Candidate]:
    """Fit, evaluate, log and register each candidate; best first."""
    from sklearn.metrics import accuracy_score, f1_score

    trained = []
    for name, factory in (candidates or default_candidates()).items():
        estimator = factory()
        params = {"candidate": name, **{k: v for k, v in estimator.get_params().items() if _simple(v)}}
        with start_run(name, params=params, tags={"mlops.candidate": name}) as run:
            estimator.fit(X_train, y_train)
            predicted = estimator.predict(X_val)
            metrics = {
                METRIC: float(f1_score(y_val, predicted, average="macro")),
                "val_accuracy": float(accuracy_score(y_val, predicted)),
                "train_rows": float(len(X_train)),
            }
            run.log_metrics(metrics)
            version = run.log_model(estimator, register_as=register_as, input_example=X_val.head(3),
                                    data_hash=data_hash(X_train))
        candidate = Candidate(name, version, metrics)
        trained.append(candidate)
        if on_trained:
            on_trained(candidate)
    return sorted(trained, key=lambda c: (-c.metrics[METRIC], -c.version))


def champion_challenger(
    model: str, new: list[Candidate], alias: str = "Production", challenger_alias: str = "challenger",
    min_delta: float = 0.0,
) -> GateResult:
    """Gate ``alias`` to the best version; the best new candidate not holding it becomes challenger."""
    decision = promote_best(model, METRIC, alias, min_delta=min_delta)
    champion = decision.candidate_version if decision.promoted else decision.current_version
    runner_up = next((c for c in new if c.version != champion), None)
    challenger = None
    if runner_up is not None:
        challenger = set_alias(model, challenger_alias, runner_up.version,
                               reason=f"best new candidate not in {alias}: {runner_up.name} {METRIC}={runner_up.metrics[METRIC]:.4f}")
    return GateResult(decision, challenger)


def _simple(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None
