"""The champion/challenger gate: move an alias to the best version only if it clearly wins.

The candidate is the registered version whose source run has the best value of one
metric; the alias moves only when the candidate beats the current holder by at least
``min_delta``. Blocked versions do not compete; a winner the environment's policy may not
put on the alias (not approved) leaves it where it is, with that reason. Every decision,
moved or not, comes back with the reason, and every move is recorded in the alias history
like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlops_toolkit import audit
from mlops_toolkit.aliases import AliasChange, set_alias
from mlops_toolkit.approvals import BLOCKED_TAG, governance_of, why_not_deployable
from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import ValidationError
from mlops_toolkit.governance import environment
from mlops_toolkit.registry import alias_version, iter_model_versions


@dataclass(frozen=True)
class PromotionDecision:
    """What the gate decided and why."""

    model: str
    alias: str
    metric: str
    promoted: bool
    candidate_version: int
    candidate_value: float
    current_version: int | None
    current_value: float | None
    reason: str
    change: AliasChange | None = None

    def __str__(self) -> str:
        if self.promoted:
            return f"{self.model}@{self.alias} promoted: {self.reason}"
        if self.current_version is None:  # a dry run on a free alias
            return f"{self.model}@{self.alias} unchanged: {self.reason}"
        return f"{self.model}@{self.alias} stays on v{self.current_version}: {self.reason}"


def promote_best(
    model: str | None,
    metric: str,
    alias: str = "Production",
    *,
    higher_is_better: bool = True,
    min_delta: float = 0.0,
    dry_run: bool = False,
) -> PromotionDecision:
    """Point ``alias`` at the best version by ``metric`` if it beats the holder by ``min_delta``.
    Every decision (moved or not, not a dry run) is an audit event."""
    decision = _promote_best(model, metric, alias, higher_is_better, min_delta, dry_run)
    if not dry_run:
        audit.record("promote", "promoted" if decision.promoted else "kept", model=decision.model, alias=alias,
                     from_version=decision.current_version, to_version=decision.candidate_version,
                     reason=decision.reason, metric=metric)
    return decision


def _promote_best(model: str | None, metric: str, alias: str, higher_is_better: bool, min_delta: float,
                  dry_run: bool) -> PromotionDecision:
    model = resolve_model_name(model)
    metric = require_name(metric, "metric")
    alias = require_name(alias, "alias")
    if min_delta < 0:
        raise ValidationError(f"min_delta must be >= 0, got {min_delta}")
    with registry() as client:
        current_version = alias_version(client, model, alias)
        scores = _scores_by_version(client, model, metric)
    if not scores:
        raise ValidationError(f"no version of '{model}' comes from a run that logged metric '{metric}'")

    sign = 1.0 if higher_is_better else -1.0
    # Best score first; on a tie keep the current holder, then prefer the newest version.
    candidate = max(scores, key=lambda v: (sign * scores[v], v == current_version, v))
    value = scores[candidate]
    current_value = scores.get(current_version) if current_version is not None else None
    decide = _Decision(model, alias, metric, candidate, value, current_version, current_value)

    if current_version is None:
        return decide.promote(f"v{candidate} {metric}={value:.6g} takes the free alias", dry_run)
    if candidate == current_version:
        return decide.keep(f"v{candidate} already holds it and is the best ({metric}={value:.6g})")
    if current_value is None:
        return decide.promote(
            f"v{candidate} {metric}={value:.6g} replaces v{current_version}, whose run has no {metric}",
            dry_run,
        )
    gain = sign * (value - current_value)
    comparison = f"v{candidate} {metric}={value:.6g} vs v{current_version} {metric}={current_value:.6g}"
    if gain > 0 and gain >= min_delta:
        return decide.promote(f"{comparison}: better by {gain:.6g} (min_delta {min_delta:g})", dry_run)
    return decide.keep(
        f"v{current_version} ({metric}={current_value:.6g}) stays; best candidate v{candidate} ({metric}={value:.6g}) "
        f"gains {gain:.6g}, below min_delta {min_delta:g}"
    )


@dataclass(frozen=True)
class _Decision:
    model: str
    alias: str
    metric: str
    candidate: int
    value: float
    current: int | None
    current_value: float | None

    def _make(self, promoted: bool, reason: str, change: AliasChange | None) -> PromotionDecision:
        return PromotionDecision(
            self.model, self.alias, self.metric, promoted, self.candidate, self.value,
            self.current, self.current_value, reason, change,
        )

    def keep(self, reason: str) -> PromotionDecision:
        return self._make(False, reason, None)

    def promote(self, reason: str, dry_run: bool) -> PromotionDecision:
        with registry() as client:  # an unapproved winner, where approval is required, does not move it
            blocker = why_not_deployable(governance_of(client, self.model, self.candidate), self.alias, environment())
        if blocker is not None:
            return self.keep(f"{reason}; but {blocker}")
        if dry_run:
            return self._make(False, f"dry run, would promote: {reason}", None)
        change = set_alias(self.model, self.alias, self.candidate, reason=f"promote_best: {reason}")
        return self._make(True, reason, change)


def _scores_by_version(client, model: str, metric: str) -> dict[int, float]:
    """``{version: metric value}`` for READY versions whose run logged ``metric``."""
    from mlflow.exceptions import MlflowException

    run_metrics: dict[str, dict[str, float]] = {}
    scores: dict[int, float] = {}
    for mv in iter_model_versions(client, model):
        if mv.status != "READY" or not mv.run_id or (mv.tags or {}).get(BLOCKED_TAG) == "true":
            continue  # not ready, no run, or blocked: it cannot compete
        if mv.run_id not in run_metrics:
            try:
                run_metrics[mv.run_id] = client.get_run(mv.run_id).data.metrics
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                run_metrics[mv.run_id] = {}  # the run was deleted: the version cannot compete
        if metric in run_metrics[mv.run_id]:
            scores[int(mv.version)] = float(run_metrics[mv.run_id][metric])
    return scores


__all__ = ["PromotionDecision", "promote_best"]
