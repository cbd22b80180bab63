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


def test_an_agreement_gate_fails_a_candidate_that_disagrees_with_the_baseline():
    gated = rollout(min_agreement=0.9)
    verdict, reason = judge(gated, StepFigures(100, 0, 50.0, labels_compared=200, labels_agreed=190), now=1060.0)
    assert verdict == "next" and "agreement 95.00% of 200 values" in reason
    verdict, reason = judge(gated, StepFigures(100, 0, 50.0, labels_compared=200, labels_agreed=100), now=1060.0)
    assert verdict == "fail" and "agreement 50.00% < 90.00% (200 values)" in reason


def test_a_comparison_gate_waits_for_values_then_fails_a_candidate_it_cannot_compare():
    """No comparisons (the shadow copies fail, or the outputs are numbers, not labels): the
    step waits up to three windows, then fails rather than promote an unchecked candidate."""
    gated = rollout(min_agreement=0.9)
    starved = StepFigures(100, 0, 50.0, labels_compared=4, labels_agreed=4)
    assert judge(gated, starved, now=1060.0) == ("wait", None)
    assert judge(gated, starved, now=1179.0) == ("wait", None)
    verdict, reason = judge(gated, starved, now=1180.0)
    assert verdict == "fail" and "only 4 labels compared with v2 for the agreement gate" in reason
    # a figure that already fails does not wait for comparisons
    verdict, reason = judge(gated, StepFigures(100, 50, 50.0), now=1060.0)
    assert verdict == "fail" and "error rate 50.00%" in reason


def test_a_difference_gate_judges_numeric_outputs():
    gated = rollout(max_mean_abs_diff=0.5)
    verdict, reason = judge(gated, StepFigures(100, 0, 50.0, numbers_compared=100, abs_diff_sum=20.0), now=1060.0)
    assert verdict == "next" and "mean abs diff 0.2 over 100 values" in reason
    verdict, reason = judge(gated, StepFigures(100, 0, 50.0, numbers_compared=100, abs_diff_sum=80.0), now=1060.0)
    assert verdict == "fail" and "mean abs diff 0.8 > 0.5 (100 values)" in reason


def test_the_last_step_needs_no_comparison_there_is_nothing_left_to_compare_with():
    verdict, reason = judge(rollout(min_agreement=0.9, step=1), StepFigures(100, 0, 50.0), now=1060.0)
    assert verdict == "promote" and "agreement" not in reason


def test_a_candidate_answering_nan_or_inf_fails_the_difference_gate():
    """NaN > limit is False: a NaN sum used to pass the gate and promote the candidate."""
    gated = rollout(max_mean_abs_diff=0.5)
    for figures in (StepFigures(100, 0, 50.0, numbers_compared=100, abs_diff_sum=float("nan")),
                    StepFigures(100, 0, 50.0, numbers_compared=100, abs_diff_sum=float("inf")),
                    StepFigures(100, 0, 50.0, numbers_compared=100, abs_diff_sum=1.0, nonfinite=3)):
        verdict, reason = judge(gated, figures, now=1060.0)
        assert verdict == "fail" and "not finite (NaN or inf)" in reason, (figures, reason)


def test_a_nan_latency_fails_the_step():
    verdict, reason = judge(rollout(), StepFigures(100, 0, float("nan")), now=1060.0)
    assert verdict == "fail" and "p95" in reason
