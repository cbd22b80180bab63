"""Acceptance: an audit store that hangs while an alias moves stalls no reconcile cycle and
loses no event.

A real watcher serves a real model; its trail is in S3 on moto's server (standing in for
MinIO, which cannot run here). The outage: the server is frozen with SIGSTOP for 30 s (it
still takes connections and never answers: a hung object store, the worst case for a
client) while the alias moves, so the move's autoserve.deploy and autoserve.switch happen
inside it; then it is killed and started again on the same port. moto keeps its objects in
memory, so what counts is what arrives after it is back.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import mlops_toolkit as mt
from mlops_toolkit import audit
from mlops_toolkit.ops.processes import free_port
from tests.harness import Watcher, wait_for
from tests.mlops_toolkit.test_audit_spool import DUMMY_AWS, moto_on

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 90
OUTAGE_S = 30
ARRIVES_S = 15
TRAIL = "s3://audit/watcher"


def _cycles(watcher: Watcher) -> tuple[float, float]:
    """(reconcile cycles so far, those that took longer than 2 s), from the watcher's histogram."""
    name = "autoserve_reconcile_duration_seconds_bucket"
    every, within = watcher.metric(name, le="+Inf"), watcher.metric(name, le="2.0")
    return every, every - within


def _move_events(model: str, v1: int, v2: int) -> dict[str, audit.AuditEvent] | None:
    """The move's events in the trail, by action, once both are there."""
    events = audit.list_events(model=model, uri=TRAIL)
    found = {e.action: e for e in events
             if (e.action == "autoserve.switch" and (e.from_version, e.to_version) == (v1, v2))
             or (e.action == "autoserve.deploy" and e.outcome == "done" and e.version == v2)}
    return found if len(found) == 2 else None


def test_a_hung_audit_store_stalls_no_reconcile_cycle_and_loses_no_event(tracking_uri, served_model, tmp_path,
                                                                          monkeypatch):
    for key, value in DUMMY_AWS.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    moto = moto_on(port, tmp_path / "moto.log", "audit")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("MLOPS_AUDIT_URI", TRAIL)
    model, (v1, v2, _) = served_model.name, served_model.good
    state = tmp_path / "state"
    watcher = Watcher(tracking_uri, state, [model]).start()
    monkeypatch.delenv("MLOPS_AUDIT_URI")  # the watcher took its copy: only it writes the trail from here
    try:
        watcher.serving(model, DEPLOY_TIMEOUT, Production=v1)
        wait_for(lambda: audit.list_events(model=model, action="autoserve.deploy", uri=TRAIL), ARRIVES_S,
                 what="the first deploy in the trail before the outage")
        cycles_before, slow_before = _cycles(watcher)

        os.kill(moto.process.pid, signal.SIGSTOP)  # the store hangs
        frozen_at = time.monotonic()
        mt.set_alias(model, "Production", v2)
        wait_for(lambda: watcher.endpoint_ready("Production", v2), DEPLOY_TIMEOUT,
                 what=f"Production moved to v{v2} with the audit store hung")
        switched_in = time.monotonic() - frozen_at
        time.sleep(max(0.0, OUTAGE_S - switched_in))

        cycles, slow = _cycles(watcher)
        print(f"\nswitch {switched_in:.1f} s into the outage; {cycles - cycles_before:.0f} reconcile cycles in it, "
              f"{slow - slow_before:.0f} over 2 s ({slow:.0f} over 2 s of {cycles:.0f} since start)")
        assert slow - slow_before == 0, f"{slow - slow_before:.0f} reconcile cycles took over 2 s: audit stalled them"
        assert cycles - cycles_before >= 20, "the reconcile loop hardly ran during the outage"
        assert watcher.metric("autoserve_audit_spooled") >= 2  # the move's deploy and switch, kept on disk
        assert len(list((state / "audit-spool").glob("*.json"))) >= 2

        os.kill(moto.process.pid, signal.SIGKILL)  # a frozen process ignores SIGTERM until it is continued
        moto.process.wait(10)
        moto = moto_on(port, tmp_path / "moto.log", "audit")  # the same port, a new (empty) store
        back_at = time.monotonic()
        arrived = wait_for(lambda: _move_events(model, v1, v2), ARRIVES_S, interval=0.25,
                           what="the move's switch and deploy events in the trail")
        print(f"the move's events arrived {time.monotonic() - back_at:.1f} s after the store was back")
        assert arrived["autoserve.switch"].alias == "Production"
        assert arrived["autoserve.deploy"].details.get("aliases") == "Production"
        wait_for(lambda: not list((state / "audit-spool").glob("*.json")), ARRIVES_S, what="the spool emptied")
        assert watcher.metric("autoserve_audit_spooled") == 0
        assert watcher.metric("autoserve_audit_events_total", result="sent") >= 3  # v1's deploy, then the move's
        assert watcher.metric("autoserve_audit_events_total", result="dropped") == 0
    finally:
        watcher.stop()
        if moto.process.poll() is None:
            os.kill(moto.process.pid, signal.SIGCONT)  # a frozen server would ignore the SIGTERM of stop()
            moto.stop()
