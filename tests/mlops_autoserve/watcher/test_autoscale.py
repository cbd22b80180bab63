"""Autoscaling: the decision rules on plain values (milliseconds), then real replicas of a
real ``mlflow models serve`` following a real request load through the gateway."""

from __future__ import annotations

import json
import re
import time

import pytest
from mlops_autoserve.watcher.autoscale import Autoscaler, Load, LoadMeter, ScalePolicy
from mlops_autoserve.watcher.planner import Inputs, plan
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey

import mlops_toolkit as mt
from tests.harness import LoadClient, Watcher, wait_for

KEY = DeploymentKey("iris", 3)
POLICY = ScalePolicy(min_replicas=1, max_replicas=4, target_inflight=0, target_rps=50, up_window=10,
                     down_cooldown=60)


def _feed(scaler: Autoscaler, rps: float, start: float, seconds: float, policy: ScalePolicy = POLICY, step: float = 2):
    """Samples every ``step`` s from ``start``; returns the decisions and the time after the last."""
    decisions, now = [], start
    while now < start + seconds:
        decision = scaler.decide(KEY, policy, Load(inflight=0, rps=rps), now, wall=1e9 + now)
        if decision:
            decisions.append((now, decision))
        now += step
    return decisions, now


# -- the rules ---------------------------------------------------------------------------------
def test_load_above_target_for_the_window_jumps_to_the_count_it_needs_capped_at_max():
    scaler = Autoscaler()
    decisions, _ = _feed(scaler, rps=170, start=0, seconds=30)  # 170 req/s, target 50: needs 4
    assert [(t, d.before, d.after) for t, d in decisions] == [(10, 1, 4)]  # once, at the end of the window
    assert "170 req/s" in decisions[0][1].reason and "target 50 req/s per replica" in decisions[0][1].reason
    scaler = Autoscaler()
    decisions, _ = _feed(scaler, rps=1000, start=0, seconds=30)
    assert [d.after for _, d in decisions] == [4]  # the ceiling


def test_a_spike_that_leaves_the_windows_mean_under_target_adds_nothing():
    scaler = Autoscaler()
    decisions, now = _feed(scaler, rps=200, start=0, seconds=2)  # one 2 s sample at 4x the target
    decisions2, _ = _feed(scaler, rps=10, start=now, seconds=60)
    assert decisions == decisions2 == []
    assert scaler.wanted(KEY) == 1


def test_scale_down_is_one_replica_per_cooldown_and_never_below_min():
    scaler = Autoscaler()
    _, now = _feed(scaler, rps=170, start=0, seconds=12)
    assert scaler.wanted(KEY) == 4
    decisions, _ = _feed(scaler, rps=0, start=now, seconds=400)
    steps = [(d.before, d.after) for _, d in decisions]
    assert steps == [(4, 3), (3, 2), (2, 1)]
    times = [t for t, _ in decisions]
    assert all(b - a >= 60 for a, b in zip([10, *times], times, strict=False))  # a cooldown between changes
    assert scaler.wanted(KEY) == 1


def test_nothing_is_removed_while_added_replicas_are_still_starting():
    scaler = Autoscaler()
    _, now = _feed(scaler, rps=170, start=0, seconds=12)
    assert scaler.wanted(KEY) == 4
    # the new replicas take 100 s to start and the machine slows: the load reads low meanwhile
    for t in range(int(now), int(now) + 100, 2):
        assert scaler.decide(KEY, POLICY, Load(0, 20), t, 0, settled=False) is None
    # once they are ready, the cool-down starts from there
    later = int(now) + 100
    assert scaler.decide(KEY, POLICY, Load(0, 20), later, 0) is None
    decision = scaler.decide(KEY, POLICY, Load(0, 20), later + 60, 0)
    assert (decision.before, decision.after) == (4, 3)


def test_in_flight_target_uses_the_windows_mean_not_one_instant():
    policy = ScalePolicy(1, 3, target_inflight=2, target_rps=0, up_window=6, down_cooldown=30)
    scaler = Autoscaler()
    # instants jump between 0 and 8 (short requests): the mean, 4, needs 2 replicas
    decisions = [scaler.decide(KEY, policy, Load(8 if i % 2 else 0, 0), i * 2.0, 0) for i in range(8)]
    assert [(d.before, d.after) for d in decisions if d] == [(1, 2)]


def test_bounds_from_a_changed_policy_apply_at_once_and_off_means_floor():
    scaler = Autoscaler()
    _feed(scaler, rps=170, start=0, seconds=12)
    lowered = ScalePolicy(1, 2, 0, 50, 10, 60)
    decision = scaler.decide(KEY, lowered, Load(0, 170), 20, 0)
    assert (decision.before, decision.after, decision.reason) == (4, 2, "bounds changed")
    fixed = ScalePolicy(3, 3, 0, 50, 10, 60)
    assert not fixed.enabled
    assert scaler.decide(KEY, fixed, None, 22, 0).after == 3


def test_load_meter_turns_the_gateways_counters_into_rates_per_version():
    meter = LoadMeter()
    urls = {KEY: ["http://a", "http://b"], DeploymentKey("iris", 4): ["http://c"]}
    first = meter.measure({"http://a": {"inflight": 1, "requests": 100}, "http://b": {"inflight": 2, "requests": 50}},
                          urls, now=10.0)
    assert first[KEY] == Load(3, 0.0)  # no rate before a second sample
    second = meter.measure({"http://a": {"inflight": 0, "requests": 160}, "http://b": {"inflight": 1, "requests": 90},
                            "http://c": {"inflight": 0, "requests": 5}}, urls, now=12.0)
    assert second[KEY] == Load(1, 50.0)  # (60 + 40) / 2 s
    assert second[DeploymentKey("iris", 4)] == Load(0, 2.5)  # c is new: 5 requests since the last sample


def test_planner_starts_and_retires_the_scaled_replicas_and_a_scale_up_never_degrades_the_route():
    def deployment(replica: int) -> Deployment:
        return Deployment(KEY, f"http://r{replica}", f"id{replica}", 0.0, replica)

    base = dict(desired={("iris", "Production"): 3}, now=100.0, wall=1e9, replicas={"iris": 1})
    up = plan(Inputs(observed=[(deployment(0), True)], previous={}, scaled={KEY: 3}, **base))
    assert [(k, r) for k, r, _ in up.deploy] == [(KEY, 1), (KEY, 2)]
    assert up.routes[("iris", "Production")].state == "ready"  # 1 ready meets the floor
    down = plan(Inputs(observed=[(deployment(i), True) for i in range(3)], previous=up.routes, scaled={KEY: 2},
                       drain_seconds=0, **base))
    assert [d.replica for d in down.retire] == [2]
    assert [d.replica for d in down.routes[("iris", "Production")].deployments] == [0, 1]


# -- for real ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_replicas_follow_a_real_load_up_to_max_and_back_to_min(tracking_uri, served_model, tmp_path, mlops_script):
    """One replica; 80 req/s against a target of 30 per replica for 3 s -> 3 replicas (the
    ceiling); load stopped -> back to 1, one per 4 s cooldown; no request fails throughout."""
    state = tmp_path / "state"
    w = Watcher(tracking_uri, state, [served_model.name], "--aliases", "scaled", "--max-replicas", "3",
                "--scale-target-rps", "30", "--scale-target-inflight", "0", "--scale-up-window", "3",
                "--scale-down-cooldown", "4").start()
    mt.set_alias(served_model.name, "scaled", served_model.good[0])
    try:
        wait_for(lambda: (e := w.endpoints().get("scaled")) and e["ready_replicas"] == 1, 120, what="one replica")
        path = f"/serve/{served_model.name.replace(' ', '%20')}/scaled/invocations"
        with LoadClient(w.port, path, rate=80) as load:
            started = time.monotonic()
            wait_for(lambda: w.endpoints()["scaled"]["ready_replicas"] == 3, 120, what="three ready replicas")
            scaled_up_after = time.monotonic() - started
            endpoint = w.endpoints()["scaled"]
            # read under load: once it stops, the 4 s cooldown starts taking replicas away
            status = mlops_script("serve", "status", "--gateway-admin", w.admin_url)
            time.sleep(2)  # traffic spreads over the new replicas
        assert load.failed == 0, load.codes
        assert endpoint["scale"]["wanted"] == 3 and endpoint["scale"]["max"] == 3
        # up to the ceiling, in one step or two (the first rate sample may catch the load ramping)
        assert re.match(r"up [12] -> 3: \d+ req/s .* target 30 req/s per replica", endpoint["scale"]["last"])
        assert re.search(r"3/3 wants 3 \(1-3\), up [12] -> 3 \d+ s ago", status.stdout), status.stdout
        print(f"\nscaled up 1 -> 3 in {scaled_up_after:.1f} s after the load started "
              f"({load.codes}, versions {dict(load.versions)})")

        started = time.monotonic()
        wait_for(lambda: w.endpoints()["scaled"]["ready_replicas"] == 1 and len(w.records()) == 1, 60,
                 what="back to one replica")
        print(f"scaled down 3 -> 1 in {time.monotonic() - started:.1f} s after the load stopped")
        metrics = w.metrics_text()
        assert re.search(r'autoserve_replicas_wanted\{model="[^"]+",version="\d+"\} 1\.0', metrics)
        logged = [json.loads(line) for line in w.log_path.read_text().splitlines() if '"scaling ' in line]
        print("\n".join(f"{e['message']} {e['from_replicas']} -> {e['replicas']}: {e['reason']}" for e in logged))
        steps = [(e["from_replicas"], e["replicas"]) for e in logged]
        assert steps[-2:] == [(3, 2), (2, 1)] and all(e["reason"] for e in logged), steps  # down one at a time
        ups = sum(1 for before, after in steps if after > before)
        downs = len(steps) - ups
        assert re.search(rf'autoserve_scale_total{{direction="up",model="[^"]+",version="\d+"}} {ups}\.0', metrics)
        assert re.search(rf'autoserve_scale_total{{direction="down",model="[^"]+",version="\d+"}} {downs}\.0', metrics)
    finally:
        w.stop()
        mt.delete_alias(served_model.name, "scaled")
