"""Readiness and liveness, kept apart: tell a slow deployment from a dead one.

* **Ready** (in the route): the last ``GET /ping`` answered, or a deployment that was ready
  has missed fewer than ``fail_threshold`` pings in a row. One missed 1 s ping is noise.
* **Restart** only when the process/container is gone, when a deployment that never got
  ready is past ``ready_timeout``, or when one that was ready has failed every ping for
  ``liveness_window`` seconds.
* **Unknown** (the runtime itself did not answer) changes nothing: never a restart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mlops_autoserve.watcher.runtime.base import Health


class Verdict(enum.Enum):
    READY = "ready"  # route traffic to it
    NOT_READY = "not_ready"  # keep it, route nothing to it
    RESTART = "restart"  # stop it; the planner starts a new one


@dataclass
class _Seen:
    ever_ready: bool = False
    failures: int = 0  # pings failed in a row
    last_ok: float = 0.0  # monotonic time of the last good ping
    verdict: Verdict = Verdict.NOT_READY


class HealthTracker:
    def __init__(self, fail_threshold: int = 3, liveness_window: float = 30.0, ready_timeout: float = 120.0) -> None:
        self.fail_threshold = fail_threshold
        self.liveness_window = liveness_window
        self.ready_timeout = ready_timeout
        self._seen: dict[str, _Seen] = {}

    def update(self, ident: str, probe: Health, now: float, age: float) -> tuple[Verdict, str]:
        """The verdict for one deployment after one probe; ``age``: seconds since it started."""
        seen = self._seen.setdefault(ident, _Seen())
        reason = ""
        if probe is Health.READY:
            seen.ever_ready, seen.failures, seen.last_ok = True, 0, now
            seen.verdict = Verdict.READY
        elif probe is Health.DEAD:
            seen.verdict, reason = Verdict.RESTART, "deployment died"
        elif probe is Health.STARTING:
            seen.failures += 1
            if not seen.ever_ready:
                if age > self.ready_timeout:
                    seen.verdict, reason = Verdict.RESTART, "deployment never became ready"
                else:
                    seen.verdict = Verdict.NOT_READY
            elif now - seen.last_ok > self.liveness_window and seen.failures >= self.fail_threshold:
                seen.verdict = Verdict.RESTART
                reason = f"deployment failed every /ping for {now - seen.last_ok:.0f} s"
            else:
                seen.verdict = Verdict.READY if seen.failures < self.fail_threshold else Verdict.NOT_READY
        # Health.UNKNOWN: keep the last verdict
        return seen.verdict, reason

    def forget(self, keep: set[str]) -> None:
        """Drop what is known of deployments that no longer exist."""
        for ident in list(self._seen):
            if ident not in keep:
                del self._seen[ident]
