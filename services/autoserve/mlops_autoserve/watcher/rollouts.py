"""The rollout controller: drive each running canary rollout one step at a time.

Split as the route controller is: :func:`decide` is a pure function (the rollout as the
watcher last saw it, what was observed this cycle, the time) -> one :class:`Step`, tested
with plain values in milliseconds; :class:`RolloutController` gathers the observations (one
read of the model per running rollout per cycle, the gateway's figures) and carries the
step out (tag writes, the alias move, audit, metrics). Each rollout is handled on its own:
an error with one is logged and it is judged again next cycle, the others go on.

A promotion is the watcher's own act: the alias moves as the watcher's user, and the user
the rollout's tag names is recorded beside it as ``requested_by`` (the tag is not
authenticated: anyone who can write tags can write that name).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.desired import Desired, RouteKey
from mlops_autoserve.watcher.gateways import GatewayFleet
from mlops_autoserve.watcher.observe import Snapshot
from mlops_toolkit import audit
from mlops_toolkit.aliases import set_alias
from mlops_toolkit.errors import one_line
from mlops_toolkit.governance import Decision, PolicyRefusal, acting_user, environment
from mlops_toolkit.registry import alias_map
from mlops_toolkit.rollout import (
    ABORTED,
    FAILED,
    MIN_REQUESTS,
    PASSED,
    RUNNING,
    Rollout,
    StepFigures,
    judge,
    rollout_of,
)
from mlops_toolkit.rollout import save as save_rollout
from mlops_toolkit.tags import MODEL_VERSION_TAG_MAX, fit

log = logging.getLogger("autoserve.rollouts")

ROLLOUT_RESULT_TAG = "mlops.rollout.result"  # on the candidate version: why its rollout failed

WAIT, NEXT, PROMOTE, FAIL, ENDED = "wait", "next", "promote", "fail", "ended"


@dataclass(frozen=True)
class Observed:
    """What the controller saw of one rollout this cycle."""

    fresh: Rollout | None  # the rollout tag as read now (None: removed, replaced by garbage)
    serving: int | None  # the version the rollout's alias points at now
    figures: StepFigures | None  # the gateway's figures for the step (None: not known yet)


@dataclass(frozen=True)
class Step:
    """What to do with one rollout: the rollout as it is after the step, and what to write."""

    kind: str  # wait | next | promote | fail | ended
    rollout: Rollout
    save: bool = False  # write the rollout's tag
    reason: str | None = None


def decide(rollout: Rollout, seen: Observed, now: float) -> Step:
    """The next step of a running rollout; no I/O, no clock of its own."""
    fresh = seen.fresh
    if fresh is None or fresh.state != RUNNING or fresh.candidate != rollout.candidate:
        ended = fresh if fresh is not None and fresh.state != RUNNING else replace(
            rollout, state=ABORTED, reason="the rollout's tag was removed or replaced")
        return Step(ENDED, ended)
    rollout = fresh
    if seen.serving != rollout.baseline:
        if seen.serving == rollout.candidate:
            return Step(ENDED, replace(rollout, state=PASSED), save=True)
        where = f"v{seen.serving}" if seen.serving is not None else "nothing (the alias was deleted)"
        return Step(ENDED, replace(rollout, state=ABORTED, reason=f"{rollout.model}@{rollout.alias} was moved to "
                                   f"{where} by hand during the rollout"), save=True)
    if seen.figures is None:
        return Step(WAIT, rollout)
    verdict, reason = judge(rollout, seen.figures, now)
    if verdict == "next":
        return Step(NEXT, replace(rollout, step=rollout.step + 1, step_started=now, reason=reason), True, reason)
    if verdict == "promote":
        return Step(PROMOTE, replace(rollout, state=PASSED, reason=reason), True, reason)
    if verdict == "fail":
        return Step(FAIL, replace(rollout, state=FAILED, reason=reason), True, reason)
    return Step(WAIT, rollout)


def refused(step: Step, why: str) -> Step:
    """A promotion whose alias move was refused (the version was blocked, or its approval
    withdrawn, during the rollout) fails the rollout instead."""
    reason = f"the gate passed but the alias move was refused: {why}"
    return Step(FAIL, replace(step.rollout, state=FAILED, reason=reason), True, reason)


def figures_from(data: object) -> StepFigures | None:
    """The gateway's ``/stats`` answer as figures (None when it is not one: another release)."""
    if not isinstance(data, dict):
        return None
    try:
        return StepFigures(int(data.get("requests", 0)), int(data.get("errors", 0)),
                           None if data.get("p95_ms") is None else float(data["p95_ms"]),
                           int(data.get("labels_compared", 0)), int(data.get("labels_agreed", 0)),
                           int(data.get("numbers_compared", 0)), float(data.get("abs_diff_sum", 0.0)),
                           int(data.get("nonfinite", 0)))
    except (TypeError, ValueError):
        return None


class RolloutController:
    """Carries out :func:`decide` for every running rollout; returns those still running."""

    name = "rollouts"

    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics, client: Callable[[], object]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client = client  # the registry client (read lazily: tests run without one)
        self._driving: dict[RouteKey, Rollout] = {}  # running rollouts as of the last cycle
        # Rollouts that ended since the registry was last read (the Desired in hand still lists them)
        self._done: set[RouteKey] = set()
        self._read: Desired | None = None
        self.ended_any = False  # a rollout ended this cycle: the registry should be read again
        self.gateways = GatewayFleet(settings)

    def reconcile(self, snap: Snapshot) -> dict[RouteKey, Rollout]:
        desired, now = snap.desired, snap.wall
        self.ended_any = False
        if desired is not self._read:  # a new registry read: it knows which rollouts ended
            self._read, self._done = desired, set()
        for key in [k for k in self._driving if k not in desired.rollouts]:
            self._ended_elsewhere(self._driving.pop(key))
        running: dict[RouteKey, Rollout] = {}
        for key, rollout in desired.rollouts.items():
            if key in self._done:
                continue
            known = self._driving.get(key)  # newer than the registry read when it stepped since
            current = self._driving[key] = known if known is not None and known.candidate == rollout.candidate \
                else rollout
            for result in (PASSED, FAILED, ABORTED):  # series at 0 first, so an alert sees the step to 1
                self.metrics.rollout_total.labels(rollout.model, result)
            try:
                step = self._step(current, now)
            except Exception as exc:  # noqa: BLE001 - this rollout only: judged again next cycle
                log.warning("rollout step not recorded", extra={"model": key[0], "alias": key[1],
                                                                "error": one_line(exc)})
                running[key] = current
                continue
            if step.rollout.state == RUNNING:
                self._driving[key] = running[key] = step.rollout
            else:
                del self._driving[key]
                self._done.add(key)
                self._count_ended(step.rollout)
                self.ended_any = True
        return running

    # -- one rollout ---------------------------------------------------------------------
    def _step(self, rollout: Rollout, now: float) -> Step:
        client = self._client()
        # One read of this model per cycle while its rollout runs: an abort (or a hand move)
        # takes effect within a cycle, not at the next full registry poll.
        registered = client.get_registered_model(rollout.model)
        fresh = rollout_of(registered, rollout.alias)
        serving = alias_map(registered).get(rollout.alias)
        figures = self._figures(fresh) if fresh is not None and fresh.state == RUNNING and serving == fresh.baseline \
            else None
        step = decide(rollout, Observed(fresh, serving, figures), now)
        if step.kind == PROMOTE:
            step = self._promote(step)
        self._apply(client, step)
        return step

    def _promote(self, step: Step) -> Step:
        r = step.rollout
        try:  # as the watcher; the policy allowed the starter to start it; the version is checked again
            set_alias(r.model, r.alias, r.candidate, reason=f"rollout: {step.reason}",
                      authorized=Decision(acting_user(), (), "alias.set", environment()),
                      requested_by=r.started_by or None)
        except PolicyRefusal as exc:
            return refused(step, str(exc))
        return step

    def _apply(self, client, step: Step) -> None:
        r, fields = step.rollout, {"model": step.rollout.model, "alias": step.rollout.alias}
        if step.kind == FAIL:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            client.set_model_version_tag(r.model, str(r.candidate), ROLLOUT_RESULT_TAG,
                                         fit(f"{stamp} {step.reason}", MODEL_VERSION_TAG_MAX))
        if step.save:
            save_rollout(client, r)
        if step.kind == NEXT:
            log.info(f"rollout: {step.reason}", extra={**fields, "version": r.candidate})
            audit.record("rollout.step", "passed", model=r.model, alias=r.alias, to_version=r.candidate,
                         reason=step.reason)
        elif step.kind in (PROMOTE, FAIL):
            audit.record("rollout.end", r.state, model=r.model, alias=r.alias, from_version=r.baseline,
                         to_version=r.candidate, reason=r.reason, requested_by=r.started_by or None)
            log.info(f"rollout ended: {r}", extra={**fields, "version": r.candidate, "result": r.state})
        elif step.kind == ENDED:
            log.warning(f"rollout ended: {r}", extra=fields)

    def _ended_elsewhere(self, rollout: Rollout) -> None:
        """A rollout this watcher drove is gone from the registry's running ones (an abort
        read by a registry poll before a cycle saw it): count how it ended, once."""
        try:
            fresh = rollout_of(self._client().get_registered_model(rollout.model), rollout.alias)
        except Exception:  # noqa: BLE001 - the registry is away: the tag said it is not running
            fresh = None
        same = fresh is not None and fresh.candidate == rollout.candidate and fresh.state != RUNNING
        ended = fresh if same else replace(rollout, state=ABORTED, reason="ended outside this watcher")
        log.warning(f"rollout ended: {ended}", extra={"model": rollout.model, "alias": rollout.alias})
        self._count_ended(ended)

    def _count_ended(self, ended: Rollout) -> None:
        self.metrics.rollout_total.labels(ended.model, ended.state).inc()
        self.metrics.rollout_percent.labels(ended.model, ended.alias, str(ended.candidate)).set(0)

    # -- the gateway's figures -----------------------------------------------------------
    def _figures(self, rollout: Rollout) -> StepFigures | None:
        """The step's figures over every gateway instance (None while none answers)."""
        figures = figures_from(self.gateways.stats(rollout.model, rollout.alias, str(rollout.candidate),
                                                   rollout.step_started))
        if figures is not None:
            self._publish_gate(rollout, figures)
        return figures

    def _publish_gate(self, rollout: Rollout, figures: StepFigures) -> None:
        """The step's figures as gauges (kept after the rollout ends: why it ended stays visible)."""
        if figures.requests < MIN_REQUESTS:
            return
        labels = (rollout.model, rollout.alias, str(rollout.candidate))
        self.metrics.rollout_step_error_ratio.labels(*labels).set(figures.errors / figures.requests)
        if figures.p95_ms is not None:
            self.metrics.rollout_step_p95.labels(*labels).set(figures.p95_ms / 1000)
        if figures.labels_compared >= MIN_REQUESTS:
            self.metrics.rollout_step_agreement.labels(*labels).set(figures.labels_agreed / figures.labels_compared)
