"""A rollout step's gate, with plain values (the watcher measures, ``judge`` decides)."""

from __future__ import annotations

from mlops_toolkit.rollout import Rollout, StepFigures, judge


def rollout(**changes) -> Rollout:
    base = dict(model="iris", alias="Production", to="challenger", candidate=3, baseline=2, steps=(25, 100),
                step_seconds=60.0, max_error_rate=0.01, max_p95_ms=200.0, step=0, step_started=1000.0)
    return Rollout(**{**base, **changes})


def test_a_step_is_not_judged_before_its_time_or_without_traffic():
    assert judge(rollout(), StepFigures(500, 0, 10.0), now=1059.0) == ("wait", None)
    assert judge(rollout(), StepFigures(9, 0, 10.0), now=2000.0) == ("wait", None)


def test_a_good_step_moves_on_and_the_last_one_promotes():
    verdict, reason = judge(rollout(), StepFigures(400, 2, 50.0), now=1060.0)
    assert verdict == "next" and reason == "step 1/2 at 25% passed (400 requests, error rate 0.50%, p95 50.0 ms)"
    verdict, reason = judge(rollout(step=1), StepFigures(400, 0, 50.0), now=1060.0)
    assert verdict == "promote" and reason.startswith("rollout passed 2 steps")


def test_a_step_fails_on_errors_or_latency_and_says_which_figure():
    verdict, reason = judge(rollout(), StepFigures(100, 5, 50.0), now=1060.0)
    assert verdict == "fail" and "error rate 5.00% > 1.00%" in reason
    verdict, reason = judge(rollout(), StepFigures(100, 0, 350.0), now=1060.0)
    assert verdict == "fail" and "p95 350.0 ms > 200 ms" in reason
