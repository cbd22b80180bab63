"""Readiness is not liveness: a slow replica leaves the route, only a gone one is restarted."""

from __future__ import annotations

from mlops_autoserve.watcher.health import HealthTracker, Verdict
from mlops_autoserve.watcher.runtime.base import Health


def test_one_missed_ping_keeps_a_ready_replica_in_the_route():
    tracker = HealthTracker(fail_threshold=3, liveness_window=30)
    assert tracker.update("a", Health.READY, 0, 10)[0] is Verdict.READY
    assert tracker.update("a", Health.STARTING, 2, 12)[0] is Verdict.READY
    assert tracker.update("a", Health.STARTING, 4, 14)[0] is Verdict.READY
    assert tracker.update("a", Health.STARTING, 6, 16)[0] is Verdict.NOT_READY  # third in a row
    assert tracker.update("a", Health.READY, 8, 18)[0] is Verdict.READY


def test_a_replica_that_stops_answering_is_restarted_only_after_the_liveness_window():
    tracker = HealthTracker(fail_threshold=3, liveness_window=30)
    tracker.update("a", Health.READY, 0, 10)
    verdicts = [tracker.update("a", Health.STARTING, t, 10 + t)[0] for t in range(2, 31, 2)]
    assert Verdict.RESTART not in verdicts
    verdict, reason = tracker.update("a", Health.STARTING, 32, 42)
    assert verdict is Verdict.RESTART and "every /ping for 32 s" in reason


def test_could_not_check_is_never_dead():
    tracker = HealthTracker()
    tracker.update("a", Health.READY, 0, 10)
    for t in range(1, 200):
        assert tracker.update("a", Health.UNKNOWN, t, 10 + t)[0] is Verdict.READY


def test_a_gone_process_is_restarted_at_once_and_a_slow_start_only_after_ready_timeout():
    tracker = HealthTracker(ready_timeout=120)
    assert tracker.update("a", Health.DEAD, 0, 1) == (Verdict.RESTART, "deployment died")
    assert tracker.update("b", Health.STARTING, 0, 60)[0] is Verdict.NOT_READY
    assert tracker.update("b", Health.STARTING, 70, 121) == (Verdict.RESTART, "deployment never became ready")
