"""Canary rollouts by alias: send a growing share of an alias's traffic to a candidate
version, step by step, and move the alias only when every step's gate held.

The rollout's state is one registered-model tag per alias (``mlops.rollout.<alias>``), so
the serving watcher reads it in its one paged search, drives the steps, and a restarted
watcher resumes where the last one was. The rules of a step are in :func:`judge`; the
watcher measures, this module decides.

A gate may also ask for **agreement** with the version being replaced: with
``min_agreement`` (labels) or ``max_mean_abs_diff`` (numbers) set, the gateway copies the
requests the baseline answers to the candidate, as a shadow, and compares the two answers.
A step below 100% then also needs :data:`MIN_REQUESTS` compared values; if it still lacks
them after :data:`STARVED_WINDOWS` windows while traffic flows, it fails: a candidate that
cannot be compared is not promoted. The 100% step is judged on errors and latency only (no
request is left for the baseline to answer).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from mlops_toolkit import audit
from mlops_toolkit.aliases import REASON_MAX_CHARS
from mlops_toolkit.approvals import check_deployable
from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import NotFoundError, ValidationError
from mlops_toolkit.governance import require
from mlops_toolkit.registry import alias_map, get_model
from mlops_toolkit.tags import fit, json_object

if TYPE_CHECKING:
    from mlflow.entities.model_registry import RegisteredModel

ROLLOUT_TAG_PREFIX = "mlops.rollout."
ROLLOUT_FORMAT = 1  # the tag's layout; a tag of another format is refused, never guessed at
MAX_STEPS = 100
MIN_REQUESTS = 10  # a step with fewer candidate requests (or compared values) than this is not judged yet
STARVED_WINDOWS = 3  # a step still without enough compared values after this many windows fails
RUNNING, PASSED, FAILED, ABORTED = "running", "passed", "failed", "aborted"


@dataclass(frozen=True)
class Rollout:
    model: str
    alias: str  # the alias whose traffic is shifted (Production)
    to: str  # the alias that named the candidate when the rollout started (challenger)
    candidate: int
    baseline: int
    steps: tuple[int, ...]  # percent of the alias's traffic per step, ending at 100
    step_seconds: float
    max_error_rate: float
    max_p95_ms: float
    min_agreement: float | None = None  # share of equal labels, candidate vs baseline
    max_mean_abs_diff: float | None = None  # mean |candidate - baseline| for numeric outputs
    step: int = 0
    step_started: float = field(default_factory=time.time)
    state: str = RUNNING
    reason: str | None = None
    started_by: str = ""

    @property
    def compares(self) -> bool:
        """Whether the gate compares the candidate's answers with the baseline's."""
        return self.min_agreement is not None or self.max_mean_abs_diff is not None

    @property
    def percent(self) -> int:
        """The candidate's share of the traffic now (0 once the rollout ended)."""
        return self.steps[self.step] if self.state == RUNNING else 0

    def __str__(self) -> str:
        head = f"{self.model}@{self.alias}: rollout of v{self.candidate} (from {self.to}) over v{self.baseline}"
        if self.state == RUNNING:
            return f"{head}, step {self.step + 1}/{len(self.steps)} at {self.percent}%"
        return f"{head} {self.state}" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True)
class StepFigures:
    """What the gateway measured for the candidate since the step started."""

    requests: int
    errors: int  # 5xx answers
    p95_ms: float | None
    labels_compared: int = 0  # shadow comparisons of the candidate against the baseline
    labels_agreed: int = 0
    numbers_compared: int = 0
    abs_diff_sum: float = 0.0
    nonfinite: int = 0  # compared values where either answer was NaN or inf (counted as disagreement)


def start_rollout(model: str | None, to: str, alias: str = "Production", *, steps: tuple[int, ...] = (5, 25, 50, 100),
                  step_seconds: float = 60.0, max_error_rate: float = 0.01, max_p95_ms: float = 500.0,
                  min_agreement: float | None = None, max_mean_abs_diff: float | None = None) -> Rollout:
    """Start shifting ``model@alias``'s traffic to the version ``model@to`` points at now.

    ``min_agreement`` / ``max_mean_abs_diff`` add a comparison with the baseline's answers
    to every step's gate (see the module's docstring).
    """
    model = resolve_model_name(model)
    alias, to = require_name(alias, "alias"), require_name(to, "alias")
    steps = tuple(int(s) for s in steps)
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)) or steps[-1] != 100:
        raise ValidationError(f"steps must be increasing percentages ending at 100, got {','.join(map(str, steps))}")
    if step_seconds <= 0 or not 0 <= max_error_rate <= 1 or max_p95_ms <= 0:
        raise ValidationError("step seconds and max p95 must be positive, max error rate within 0-1")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise ValidationError(f"min agreement is a share within 0-1, got {min_agreement:g}")
    if max_mean_abs_diff is not None and max_mean_abs_diff < 0:
        raise ValidationError(f"max mean absolute difference cannot be negative, got {max_mean_abs_diff:g}")
    if (min_agreement is not None or max_mean_abs_diff is not None) and steps == (100,):
        raise ValidationError("a comparison gate needs a step below 100% (at 100% nothing is left to compare with)")
    decision = require("rollout.start", model=model, alias=alias)
    with registry() as client:
        registered = get_model(client, model)
        aliases = alias_map(registered)
        for name in (alias, to):
            if name not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise NotFoundError(f"model '{model}' has no alias '{name}' (aliases: {known})")
        if aliases[alias] == aliases[to]:
            raise ValidationError(f"{model}@{to} is v{aliases[to]}, which {model}@{alias} already serves")
        current = rollout_of(registered, alias)
        if current is not None and current.state == RUNNING:
            raise ValidationError(f"a rollout is already running: {current}")
        check_deployable(client, model, alias, aliases[to], decision)  # it would end on the alias
        rollout = Rollout(model, alias, to, aliases[to], aliases[alias], steps, float(step_seconds),
                          float(max_error_rate), float(max_p95_ms),
                          None if min_agreement is None else float(min_agreement),
                          None if max_mean_abs_diff is None else float(max_mean_abs_diff), started_by=decision.user)
        audit.record("rollout.start", decision=decision, strict=decision.environment == "prod", model=model,
                     alias=alias, from_version=rollout.baseline, to_version=rollout.candidate, reason=str(rollout))
        save(client, rollout)
    return rollout


def rollout_status(model: str | None, alias: str = "Production") -> Rollout:
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        rollout = rollout_of(get_model(client, model), alias)
    if rollout is None:
        raise NotFoundError(f"{model}@{alias} has no rollout")
    return rollout


def abort_rollout(model: str | None, alias: str = "Production") -> Rollout:
    """Send all traffic back to the baseline at once; the alias stays where it is."""
    decision = require("rollout.abort", model=model, alias=alias)
    rollout = rollout_status(model, alias)
    if rollout.state != RUNNING:
        raise ValidationError(f"nothing to abort: {rollout}")
    ended = replace(rollout, state=ABORTED, reason=f"aborted by {decision.user}")
    audit.record("rollout.abort", decision=decision, model=rollout.model, alias=alias,
                 from_version=rollout.candidate, to_version=rollout.baseline, reason=ended.reason)
    with registry() as client:
        save(client, ended)
    return ended


@dataclass(frozen=True)
class _Check:
    measured: str  # "error rate 0.50%"
    failure: str | None  # "error rate 5.00% > 1.00%" when the figure misses its limit
    starved: str | None = None  # why it cannot be judged yet (too few values compared)


def judge(rollout: Rollout, figures: StepFigures, now: float) -> tuple[str, str | None]:
    """The gate of the current step: ('wait' | 'next' | 'promote' | 'fail', reason)."""
    elapsed = now - rollout.step_started
    if elapsed < rollout.step_seconds or figures.requests < MIN_REQUESTS:
        return "wait", None
    checks = _checks(rollout, figures)
    problems = [c.failure for c in checks if c.failure]
    starved = [c.starved for c in checks if c.starved]
    if starved and not problems:
        if elapsed < STARVED_WINDOWS * rollout.step_seconds:
            return "wait", None
        problems = starved
    step = f"step {rollout.step + 1}/{len(rollout.steps)} at {rollout.percent}%"
    measured = f"{figures.requests} requests, " + ", ".join(c.measured for c in checks if not c.starved)
    if problems:
        return "fail", f"{step} failed: {'; '.join(problems)} ({measured})"
    if rollout.step + 1 == len(rollout.steps):
        return "promote", f"rollout passed {len(rollout.steps)} steps ({step}: {measured})"
    return "next", f"{step} passed ({measured})"


def _checks(rollout: Rollout, figures: StepFigures) -> list[_Check]:
    error_rate = figures.errors / figures.requests
    checks = [_Check(f"error rate {error_rate:.2%}", f"error rate {error_rate:.2%} > {rollout.max_error_rate:.2%}"
                     if error_rate > rollout.max_error_rate else None)]
    p95 = figures.p95_ms or 0.0
    checks.append(_Check(f"p95 {p95:.1f} ms", f"p95 {p95:.1f} ms > {rollout.max_p95_ms:g} ms"
                         if not math.isfinite(p95) or p95 > rollout.max_p95_ms else None))
    if rollout.percent == 100:  # the baseline answers nothing left to compare with: judged in the earlier steps
        return checks
    if rollout.min_agreement is not None:
        n = figures.labels_compared
        agreement = figures.labels_agreed / n if n else 0.0
        checks.append(_compared(n, "labels", "agreement", rollout.baseline, f"agreement {agreement:.2%} of {n} values",
                                f"agreement {agreement:.2%} < {rollout.min_agreement:.2%} ({n} values)"
                                if agreement < rollout.min_agreement else None))
    if rollout.max_mean_abs_diff is not None:
        n = figures.numbers_compared
        mean = figures.abs_diff_sum / n if n else 0.0
        # NaN > limit is False: a candidate answering NaN or inf would pass. Not finite is a failure.
        failure = None
        if figures.nonfinite or not math.isfinite(mean):
            failure = (f"{figures.nonfinite or 'some'} answers not finite (NaN or inf) of {n} values compared")
        elif mean > rollout.max_mean_abs_diff:
            failure = f"mean abs diff {mean:.4g} > {rollout.max_mean_abs_diff:g} ({n} values)"
        shown = f"{mean:.4g}" if math.isfinite(mean) else "not finite"
        checks.append(_compared(n, "numbers", "difference", rollout.baseline, f"mean abs diff {shown} over {n} values",
                                failure))
    return checks


def _compared(n: int, noun: str, gate: str, baseline: int, measured: str, failure: str | None) -> _Check:
    """A comparison gate's check: judged once MIN_REQUESTS values were compared, else starved."""
    if n < MIN_REQUESTS:
        return _Check(measured, None, f"only {n} {noun} compared with v{baseline} for the {gate} gate")
    return _Check(measured, failure)


def save(client, rollout: Rollout) -> None:
    data = {"format": ROLLOUT_FORMAT, **{k: v for k, v in asdict(rollout).items() if k not in ("model", "alias")}}
    if data["reason"]:  # the only free text: keep the tag within the 5,000-character column
        data["reason"] = fit(data["reason"], REASON_MAX_CHARS)
    client.set_registered_model_tag(rollout.model, ROLLOUT_TAG_PREFIX + rollout.alias,
                                    json.dumps(data, separators=(",", ":")))


def rollouts_of(model: RegisteredModel) -> list[Rollout]:
    """Every readable rollout in a registered model's tags (a damaged tag is skipped)."""
    found = []
    for key in (model.tags or {}):
        if key.startswith(ROLLOUT_TAG_PREFIX):
            rollout = rollout_of(model, key[len(ROLLOUT_TAG_PREFIX):])
            if rollout is not None:
                found.append(rollout)
    return found


def rollout_of(model: RegisteredModel, alias: str) -> Rollout | None:
    """The rollout of ``model@alias`` as its tag says (None when there is none or it is damaged)."""
    raw = (model.tags or {}).get(ROLLOUT_TAG_PREFIX + alias)
    if not raw:
        return None
    try:
        return parse_rollout(model.name, alias, raw)
    except ValueError:
        return None


def parse_rollout(model: str, alias: str, raw: str) -> Rollout:
    """A rollout tag's value, checked field by field: ValueError says what is wrong.

    Any registry writer can set the tag (or hand-edit it), so nothing in it is trusted: a
    value that :func:`judge` or the watcher could trip over (no steps, NaN limits, a step
    past the last one, a version that is not a positive whole number) is refused here.
    """
    data = json_object(raw)
    fmt = data.pop("format", ROLLOUT_FORMAT)
    if fmt != ROLLOUT_FORMAT:
        raise ValueError(f"format {str(fmt)[:20]!r} is not {ROLLOUT_FORMAT} (written by another release?)")
    known = {f for f in Rollout.__dataclass_fields__ if f not in ("model", "alias")}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field {unknown[0][:40]!r}")
    for name in ("to", "candidate", "baseline", "steps", "step_seconds", "max_error_rate", "max_p95_ms"):
        if name not in data:
            raise ValueError(f"missing field {name!r}")
    steps = data["steps"]
    if not isinstance(steps, list) or not 0 < len(steps) <= MAX_STEPS or not all(_whole(s) for s in steps):
        raise ValueError(f"steps must be a list of 1-{MAX_STEPS} whole percentages")
    if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
        raise ValueError("steps must be increasing percentages ending at 100")
    state = data.get("state", RUNNING)
    if state not in (RUNNING, PASSED, FAILED, ABORTED):
        raise ValueError("state must be one of running, passed, failed, aborted")
    step = data.get("step", 0)
    if not _whole(step) or not 0 <= step < len(steps):
        raise ValueError(f"step must be a whole number within 0-{len(steps) - 1}")
    to = data["to"]
    if not isinstance(to, str) or not to.strip() or len(to) > 256:
        raise ValueError("to must be an alias name")
    for name in ("candidate", "baseline"):
        if not _whole(data[name]) or data[name] < 1:
            raise ValueError(f"{name} must be a version number (a whole number from 1)")
    limits = {"step_seconds": (0, None, True), "max_error_rate": (0, 1, False), "max_p95_ms": (0, None, True),
              "min_agreement": (0, 1, False), "max_mean_abs_diff": (0, None, False)}
    for name, (low, high, low_open) in limits.items():
        value = data.get(name)
        if value is None and name in ("min_agreement", "max_mean_abs_diff"):
            continue
        if not _finite(value) or value < low or (low_open and value == low) or (high is not None and value > high):
            bound = f"within {low}-{high}" if high is not None else ("positive" if low_open else "not negative")
            raise ValueError(f"{name} must be a finite number {bound}")
    started = data.get("step_started", time.time())
    if not _finite(started):
        raise ValueError("step_started must be a time (seconds since 1970)")
    for name in ("reason", "started_by"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise ValueError(f"{name} must be text")
    return Rollout(model=model, alias=alias, to=to, candidate=int(data["candidate"]), baseline=int(data["baseline"]),
                   steps=tuple(int(s) for s in steps), step_seconds=float(data["step_seconds"]),
                   max_error_rate=float(data["max_error_rate"]), max_p95_ms=float(data["max_p95_ms"]),
                   min_agreement=None if data.get("min_agreement") is None else float(data["min_agreement"]),
                   max_mean_abs_diff=None if data.get("max_mean_abs_diff") is None
                   else float(data["max_mean_abs_diff"]),
                   step=int(step), step_started=float(started), state=state, reason=data.get("reason"),
                   started_by=data.get("started_by") or "")


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["Rollout", "StepFigures", "abort_rollout", "judge", "parse_rollout", "rollout_of", "rollout_status",
           "rollouts_of", "start_rollout"]
