"""Replicas that follow the load: how many each served version wants, from the gateway's figures.

Per model a floor and a ceiling (``--min-replicas``/``--max-replicas``, or the registered
model's tags ``mlops.autoserve.min_replicas``/``max_replicas``); between them, per version,
the number of replicas that brings the load per replica back to its target: requests in
flight (``--scale-target-inflight``) or requests per second (``--scale-target-rps``), as the
gateway counts them per replica (``GET /load``, summed over its instances). Up fast, down slowly:

* up, straight to the count the load needs (never past the ceiling), once the load
  averaged over the last ``--scale-up-window`` seconds has been above target for that
  long: a spike that leaves the window's mean under target adds nothing;
* down, one replica at a time, once the load has needed fewer for ``--scale-down-cooldown``
  seconds and as long after the last change: never below the floor.

The decision is a pure function of the samples and the clock (:meth:`Autoscaler.decide`),
so its rules are tested in milliseconds; the reconciler feeds it and turns the counts into
replicas on whatever runtime serves (processes, containers, a Swarm service's tasks).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.routetable import ScaleView
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.desired import Desired
from mlops_autoserve.watcher.gateways import GatewayFleet
from mlops_autoserve.watcher.runtime.base import Deployment, DeploymentKey

log = logging.getLogger("autoserve.autoscale")


@dataclass(frozen=True)
class ScalePolicy:
    min_replicas: int
    max_replicas: int
    target_inflight: float = 4.0  # requests in flight per replica (0: not used)
    target_rps: float = 0.0  # requests per second per replica (0: not used)
    up_window: float = 10.0  # seconds above target before replicas are added
    down_cooldown: float = 60.0  # seconds below target (and since the last change) before one is removed

    @property
    def enabled(self) -> bool:
        return self.max_replicas > self.min_replicas and (self.target_inflight > 0 or self.target_rps > 0)


@dataclass(frozen=True)
class Load:
    """One version's load at one moment, summed over its replicas."""

    inflight: float
    rps: float

    def needs(self, policy: ScalePolicy) -> int:
        """Replicas that put every replica at or under its target."""
        counts = [1]
        if policy.target_inflight > 0:
            counts.append(math.ceil(self.inflight / policy.target_inflight - 1e-9))
        if policy.target_rps > 0:
            counts.append(math.ceil(self.rps / policy.target_rps - 1e-9))
        return max(counts)

    def describe(self, replicas: int) -> str:
        return f"{self.rps:.0f} req/s and {self.inflight:.1f} in flight on {replicas} replica{'s' * (replicas != 1)}"


@dataclass(frozen=True)
class Decision:
    key: DeploymentKey
    before: int
    after: int
    reason: str
    at: float  # unix time

    @property
    def direction(self) -> str:
        return "up" if self.after > self.before else "down"


@dataclass
class _VersionState:
    wanted: int
    samples: deque = field(default_factory=deque)  # (monotonic, Load), the last window's
    above_since: float | None = None
    below_since: float | None = None
    changed_at: float = 0.0
    last: Decision | None = None


class Autoscaler:
    """Remembers, per version, the wanted count and how long the load has been off target."""

    def __init__(self) -> None:
        self._versions: dict[DeploymentKey, _VersionState] = {}

    def wanted(self, key: DeploymentKey) -> int | None:
        state = self._versions.get(key)
        return state.wanted if state else None

    def last(self, key: DeploymentKey) -> Decision | None:
        state = self._versions.get(key)
        return state.last if state else None

    def forget_others(self, keep: set[DeploymentKey]) -> None:
        """Versions no longer served start from their floor if they come back."""
        for key in set(self._versions) - keep:
            del self._versions[key]

    def decide(self, key: DeploymentKey, policy: ScalePolicy, load: Load | None, now: float,
               wall: float, settled: bool = True) -> Decision | None:
        """One sample of ``key``'s load at monotonic ``now``; returns the change it causes, if any.
        ``settled``: every wanted replica is ready. Until then nothing is removed and the
        cool-down has not started: starting replicas load the machine and slow the answers,
        which would read as less load and take back what was just added."""
        state = self._versions.get(key)
        if state is None:
            state = self._versions[key] = _VersionState(wanted=policy.min_replicas, changed_at=now)
        before = state.wanted
        state.wanted = min(max(state.wanted, policy.min_replicas), policy.max_replicas)  # bounds changed
        if not policy.enabled or load is None:
            state.above_since = state.below_since = None
            return self._record(state, key, before, "bounds changed", wall) if state.wanted != before else None
        state.samples.append((now, load))
        horizon = now - max(policy.up_window, 1.0)
        while state.samples and state.samples[0][0] < horizon:
            state.samples.popleft()
        # The window's mean: in-flight counts are instants, and short requests make them jumpy.
        mean = Load(sum(s.inflight for _, s in state.samples) / len(state.samples),
                    sum(s.rps for _, s in state.samples) / len(state.samples))
        needed = min(max(mean.needs(policy), policy.min_replicas), policy.max_replicas)
        if needed > state.wanted:
            state.below_since = None
            state.above_since = now if state.above_since is None else state.above_since
            if now - state.above_since >= policy.up_window:
                state.wanted, state.above_since, state.changed_at = needed, None, now
                return self._record(state, key, before, f"{mean.describe(before)} over the last "
                                    f"{policy.up_window:g} s: {_targets(policy)}", wall)
        elif needed < state.wanted:
            state.above_since = None
            if not settled:  # the cool-down starts once the added replicas are ready
                state.below_since, state.changed_at = None, now
            else:
                state.below_since = now if state.below_since is None else state.below_since
                if now - state.below_since >= policy.down_cooldown and now - state.changed_at >= policy.down_cooldown:
                    state.wanted, state.below_since, state.changed_at = state.wanted - 1, now, now
                    return self._record(state, key, before, f"{mean.describe(before)} for {policy.down_cooldown:g} s "
                                        f"needs {needed}: {_targets(policy)}", wall)
        else:
            state.above_since = state.below_since = None
        if state.wanted != before:
            return self._record(state, key, before, "bounds changed", wall)
        return None

    @staticmethod
    def _record(state: _VersionState, key: DeploymentKey, before: int, reason: str, wall: float) -> Decision:
        state.last = Decision(key, before, state.wanted, reason, wall)
        return state.last


def _targets(policy: ScalePolicy) -> str:
    parts = []
    if policy.target_rps > 0:
        parts.append(f"{policy.target_rps:g} req/s")
    if policy.target_inflight > 0:
        parts.append(f"{policy.target_inflight:g} in flight")
    return "target " + " or ".join(parts) + " per replica"


class LoadMeter:
    """Turns the gateway's per-replica counters (``GET /load``) into per-version load.

    A gateway run as several instances has counters per instance, each from its own start:
    rates are taken per instance and then added up. A sum of counters would jump when an
    instance restarts (its counters back at 0) or misses a sample (its count missing, then
    back whole), and a jump reads as a burst of load."""

    FORGET_AFTER_S = 60.0  # an instance silent this long is gone: its counts are forgotten

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str], tuple[float, int]] = {}  # (instance, url) -> (monotonic, counter)
        self._seen: dict[str, float] = {}  # instance -> when it last answered (monotonic)

    def measure(self, figures: Mapping[str, Mapping[str, float]], urls: Mapping[DeploymentKey, list[str]],
                now: float) -> dict[DeploymentKey, Load]:
        """One gateway's figures: ``figures``: url -> {"inflight", "requests"}; ``urls``: the
        replicas of each version."""
        return self.measure_instances({"": figures}, urls, now)

    def measure_instances(self, instances: Mapping[str, Mapping[str, Mapping[str, float]]],
                          urls: Mapping[DeploymentKey, list[str]], now: float) -> dict[DeploymentKey, Load]:
        """``instances``: per gateway instance (its admin URL), its figures. An instance lists a
        replica once it sent it a request, counting from 0: one that is new since the
        instance's last sample got all of its requests since then (a replica a scale-up just
        added must not look idle, or the load seems to drop by its share)."""
        inflight: dict[str, float] = {}
        rates: dict[str, float] = {}
        for instance, figures in instances.items():
            seen = self._seen.get(instance)
            for url, data in figures.items():
                count = int(data.get("requests", 0))
                before = self._previous.get((instance, url)) or ((seen, 0) if seen is not None else None)
                if before is not None and now > before[0] and count >= before[1]:
                    rates[url] = rates.get(url, 0.0) + (count - before[1]) / (now - before[0])
                inflight[url] = inflight.get(url, 0.0) + float(data.get("inflight", 0))
                self._previous[(instance, url)] = (now, count)
            self._seen[instance] = now
        for instance in [i for i, at in self._seen.items() if now - at > self.FORGET_AFTER_S]:
            del self._seen[instance]
        for key in list(self._previous):  # an instance that did not answer keeps its counts
            instance, url = key
            if instance not in self._seen or (instance in instances and url not in instances[instance]):
                del self._previous[key]
        return {key: Load(sum(inflight.get(u, 0.0) for u in replica_urls), sum(rates.get(u, 0.0) for u in replica_urls))
                for key, replica_urls in urls.items()}


class Scaler:
    """The reconciler's autoscaling step: each model's policy (flags, then registered-model
    tags), each served version's load from the gateway, the decisions logged and counted."""

    def __init__(self, settings: AutoserveSettings, metrics: AutoserveMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.autoscaler = Autoscaler()
        self.meter = LoadMeter()
        self.policies: dict[str, ScalePolicy] = {}
        self.gateways = GatewayFleet(settings)  # every instance's load, summed
        self._blind_logged = False

    def policy(self, desired: Desired, model: str) -> ScalePolicy:
        s = self.settings
        base = desired.replicas.get(model, s.replicas)
        low = desired.min_replicas.get(model, s.min_replicas or base)
        high = max(low, desired.max_replicas.get(model, s.max_replicas or max(base, low)))
        return ScalePolicy(low, high, s.scale_target_inflight, s.scale_target_rps, s.scale_up_window,
                           s.scale_down_cooldown)

    def step(self, desired: Desired, observed: list[tuple[Deployment, bool]], now: float,
             wall: float) -> tuple[dict[str, int], dict[DeploymentKey, int]]:
        """Per model the floor (the planner's replica count), per version the autoscaler's count."""
        self.policies = {model: self.policy(desired, model) for model, _ in desired.routes}
        versions = {DeploymentKey(model, version) for (model, _), version in desired.routes.items()}
        scaling = {key for key in versions if self.policies[key.model].enabled}
        loads: dict[DeploymentKey, Load] = {}
        if scaling:
            urls = {key: [e.url for d, _ in observed if d.key == key for e in d.serving()] for key in scaling}
            figures = self._gateway_load()
            if figures is not None:
                loads = self.meter.measure_instances(figures, urls, now)
        scaled = {}
        for key in sorted(scaling):
            ready = sum(len(d.serving()) for d, is_ready in observed if d.key == key and is_ready)
            wanted = self.autoscaler.wanted(key) or self.policies[key.model].min_replicas
            settled = ready >= wanted
            decision = self.autoscaler.decide(key, self.policies[key.model], loads.get(key), now, wall, settled)
            if decision is not None:
                self._report(decision)
            scaled[key] = self.autoscaler.wanted(key)
        self.autoscaler.forget_others(scaling)
        self.metrics.replicas_wanted.clear()
        for key, count in scaled.items():
            self.metrics.replicas_wanted.labels(key.model, str(key.version)).set(count)
        return {model: policy.min_replicas for model, policy in self.policies.items()}, scaled

    def view(self, model: str, version: int | None) -> ScaleView | None:
        """What ``mlops serve status`` shows of a route's scaling (None: fixed replicas)."""
        policy = self.policies.get(model)
        if policy is None or not policy.enabled or version is None:
            return None
        key = DeploymentKey(model, version)
        last = self.autoscaler.last(key)
        return ScaleView(self.autoscaler.wanted(key) or policy.min_replicas, policy.min_replicas, policy.max_replicas,
                         f"{last.direction} {last.before} -> {last.after}: {last.reason}" if last else None,
                         last.at if last else None)

    def _gateway_load(self) -> dict | None:
        """Per gateway instance (admin URL): its per-replica figures; None when none answered."""
        figures = self.gateways.load_by_instance()
        if figures is None:
            if not self._blind_logged:
                self._blind_logged = True
                log.warning("autoscaling holds the replica counts: no load figures from the gateway",
                            extra={"gateway_admin_urls": self.gateways.urls(), "hint": "GET <gateway admin>/load"})
            return None
        self._blind_logged = False
        return figures

    def _report(self, decision: Decision) -> None:
        key = decision.key
        log.info(f"scaling {decision.direction}", extra={"model": key.model, "version": key.version,
                                                       "from_replicas": decision.before, "replicas": decision.after,
                                                       "reason": decision.reason})
        self.metrics.scale_total.labels(key.model, str(key.version), decision.direction).inc()
