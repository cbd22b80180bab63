"""The rollout controller's decisions (:func:`decide`), with plain values: milliseconds, no
MLflow. The real thing runs on processes in test_rollout.py."""

from __future__ import annotations

from dataclasses import replace

from mlops_autoserve.watcher.rollouts import (
    ENDED,
    FAIL,
    NEXT,
    PROMOTE,
    WAIT,
    Observed,
    decide,
    figures_from,
    refused,
)

from mlops_toolkit.rollout import Rollout, StepFigures

R = Rollout("iris", "Production", "challenger", candidate=3, baseline=2, steps=(25, 100), step_seconds=60.0,
            max_error_rate=0.01, max_p95_ms=200.0, max_mean_abs_diff=0.5, step_started=1000.0, started_by="ana")
GOOD = StepFigures(400, 0, 50.0, numbers_compared=100, abs_diff_sum=10.0)


def test_a_step_waits_for_its_time_and_its_figures():
    assert decide(R, Observed(R, 2, GOOD), now=1010.0).kind == WAIT
    assert decide(R, Observed(R, 2, None), now=2000.0).kind == WAIT  # the gateway did not answer


def test_a_good_step_moves_on_with_its_tag_written_and_the_last_promotes():
    step = decide(R, Observed(R, 2, GOOD), now=1061.0)
    assert (step.kind, step.save, step.rollout.step, step.rollout.step_started) == (NEXT, True, 1, 1061.0)
    last = replace(R, step=1)
    step = decide(last, Observed(last, 2, GOOD), now=1061.0)
    assert (step.kind, step.rollout.state, step.save) == (PROMOTE, "passed", True)


def test_a_nan_answering_candidate_fails_and_is_never_promoted():
    nan = StepFigures(400, 0, 50.0, numbers_compared=100, abs_diff_sum=float("nan"))
    for rollout in (R, replace(R, steps=(50, 75, 100))):
        step = decide(rollout, Observed(rollout, 2, nan), now=1061.0)
        assert step.kind == FAIL and "not finite" in step.reason, step


def test_a_removed_or_replaced_tag_ends_the_rollout_without_writing():
    for fresh in (None, replace(R, candidate=4)):
        step = decide(R, Observed(fresh, 2, GOOD), now=1061.0)
        assert (step.kind, step.rollout.state, step.save) == (ENDED, "aborted", False)
    aborted = replace(R, state="aborted", reason="aborted by ana")
    assert decide(R, Observed(aborted, 2, GOOD), now=1061.0).rollout == aborted


def test_a_hand_move_of_the_alias_ends_it_as_the_move_says():
    step = decide(R, Observed(R, 3, GOOD), now=1061.0)
    assert (step.kind, step.rollout.state, step.save) == (ENDED, "passed", True)
    step = decide(R, Observed(R, 7, GOOD), now=1061.0)
    assert (step.kind, step.rollout.state) == (ENDED, "aborted") and "moved to v7 by hand" in step.rollout.reason
    step = decide(R, Observed(R, None, GOOD), now=1061.0)
    assert step.rollout.state == "aborted" and "deleted" in step.rollout.reason


def test_the_fresh_tag_wins_over_what_the_watcher_remembered():
    later = replace(R, step=1, step_started=1061.0)
    assert decide(R, Observed(later, 2, GOOD), now=1070.0).kind == WAIT  # its own clock, not the old step's


def test_a_refused_promotion_fails_the_rollout():
    step = refused(decide(replace(R, step=1), Observed(replace(R, step=1), 2, GOOD), now=1061.0), "v3 is blocked")
    assert (step.kind, step.rollout.state, step.save) == (FAIL, "failed", True)
    assert "refused: v3 is blocked" in step.reason


def test_figures_from_another_gateway_release_are_not_guessed():
    assert figures_from({"requests": "x"}) is None and figures_from([1]) is None and figures_from(None) is None
    assert figures_from({"requests": 12, "errors": 1, "p95_ms": 3.5, "nonfinite": 2}) == StepFigures(
        12, 1, 3.5, nonfinite=2)
