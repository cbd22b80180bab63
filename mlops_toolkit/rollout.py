"""Canary rollouts by alias: send a growing share of an alias's traffic to a candidate
version, step by step, and move the alias only when every step's gate held.

The rollout's state is one registered-model tag per alias (``mlops.rollout.<alias>``), so
the serving watcher reads it in its one paged search, drives the steps, and a restarted
watcher resumes where the last one was. The rules of a step are in :func:`judge`; the
watcher measures, this module decides.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from mlops_toolkit.aliases import REASON_MAX_CHARS, current_user
from mlops_toolkit.config import registry, require_name, resolve_model_name
from mlops_toolkit.errors import NotFoundError, ValidationError
from mlops_toolkit.registry import alias_map, get_model
from mlops_toolkit.tags import fit

if TYPE_CHECKING:
    from mlflow.entities.model_registry import RegisteredModel

ROLLOUT_TAG_PREFIX = "mlops.rollout."
MIN_REQUESTS = 10  # a step with fewer candidate requests than this is not judged yet
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
    step: int = 0
    step_started: float = field(default_factory=time.time)
    state: str = RUNNING
    reason: str | None = None
    started_by: str = ""

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


def start_rollout(model: str | None, to: str, alias: str = "Production", *, steps: tuple[int, ...] = (5, 25, 50, 100),
                  step_seconds: float = 60.0, max_error_rate: float = 0.01, max_p95_ms: float = 500.0) -> Rollout:
    """Start shifting ``model@alias``'s traffic to the version ``model@to`` points at now."""
    model = resolve_model_name(model)
    alias, to = require_name(alias, "alias"), require_name(to, "alias")
    steps = tuple(int(s) for s in steps)
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)) or steps[-1] != 100:
        raise ValidationError(f"steps must be increasing percentages ending at 100, got {','.join(map(str, steps))}")
    if step_seconds <= 0 or not 0 <= max_error_rate <= 1 or max_p95_ms <= 0:
        raise ValidationError("step seconds and max p95 must be positive, max error rate within 0-1")
    with registry() as client:
        registered = get_model(client, model)
        aliases = alias_map(registered)
        for name in (alias, to):
            if name not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise NotFoundError(f"model '{model}' has no alias '{name}' (aliases: {known})")
        if aliases[alias] == aliases[to]:
            raise ValidationError(f"{model}@{to} is v{aliases[to]}, which {model}@{alias} already serves")
        current = _read(registered, alias)
        if current is not None and current.state == RUNNING:
            raise ValidationError(f"a rollout is already running: {current}")
        rollout = Rollout(model, alias, to, aliases[to], aliases[alias], steps, float(step_seconds),
                          float(max_error_rate), float(max_p95_ms), started_by=current_user())
        save(client, rollout)
    return rollout


def rollout_status(model: str | None, alias: str = "Production") -> Rollout:
    model = resolve_model_name(model)
    alias = require_name(alias, "alias")
    with registry() as client:
        rollout = _read(get_model(client, model), alias)
    if rollout is None:
        raise NotFoundError(f"{model}@{alias} has no rollout")
    return rollout


def abort_rollout(model: str | None, alias: str = "Production") -> Rollout:
    """Send all traffic back to the baseline at once; the alias stays where it is."""
    rollout = rollout_status(model, alias)
    if rollout.state != RUNNING:
        raise ValidationError(f"nothing to abort: {rollout}")
    ended = replace(rollout, state=ABORTED, reason=f"aborted by {current_user()}")
    with registry() as client:
        save(client, ended)
    return ended


def judge(rollout: Rollout, figures: StepFigures, now: float) -> tuple[str, str | None]:
    """The gate of the current step: ('wait' | 'next' | 'promote' | 'fail', reason)."""
    if now - rollout.step_started < rollout.step_seconds or figures.requests < MIN_REQUESTS:
        return "wait", None
    error_rate = figures.errors / figures.requests
    problems = []
    if error_rate > rollout.max_error_rate:
        problems.append(f"error rate {error_rate:.2%} > {rollout.max_error_rate:.2%}")
    if figures.p95_ms is not None and figures.p95_ms > rollout.max_p95_ms:
        problems.append(f"p95 {figures.p95_ms:.1f} ms > {rollout.max_p95_ms:g} ms")
    step = f"step {rollout.step + 1}/{len(rollout.steps)} at {rollout.percent}%"
    measured = f"{figures.requests} requests, error rate {error_rate:.2%}, p95 {figures.p95_ms or 0:.1f} ms"
    if problems:
        return "fail", f"{step} failed: {'; '.join(problems)} ({measured})"
    if rollout.step + 1 == len(rollout.steps):
        return "promote", f"rollout passed {len(rollout.steps)} steps ({step}: {measured})"
    return "next", f"{step} passed ({measured})"


def save(client, rollout: Rollout) -> None:
    data = {k: v for k, v in asdict(rollout).items() if k not in ("model", "alias")}
    if data["reason"]:  # the only free text: keep the tag within the 5,000-character column
        data["reason"] = fit(data["reason"], REASON_MAX_CHARS)
    client.set_registered_model_tag(rollout.model, ROLLOUT_TAG_PREFIX + rollout.alias,
                                    json.dumps(data, separators=(",", ":")))


def rollouts_of(model: RegisteredModel) -> list[Rollout]:
    """Every readable rollout in a registered model's tags (a damaged tag is skipped)."""
    found = []
    for key in (model.tags or {}):
        if key.startswith(ROLLOUT_TAG_PREFIX):
            rollout = _read(model, key[len(ROLLOUT_TAG_PREFIX):])
            if rollout is not None:
                found.append(rollout)
    return found


def _read(model: RegisteredModel, alias: str) -> Rollout | None:
    raw = (model.tags or {}).get(ROLLOUT_TAG_PREFIX + alias)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return Rollout(model=model.name, alias=alias, **{**data, "steps": tuple(data["steps"])})
    except (ValueError, TypeError, KeyError):
        return None


__all__ = ["Rollout", "StepFigures", "abort_rollout", "judge", "rollout_status", "rollouts_of", "start_rollout"]
