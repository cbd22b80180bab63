"""Shadow traffic on real ``mlflow models serve`` processes: every copy compared, callers
never waiting for the shadow (not even a hung one), and nothing sent once cleared."""

from __future__ import annotations

import os
import signal
import time

import pytest

import mlops_toolkit as mt
from tests.harness import IRIS_SPLIT, Watcher, wait_for

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 120
TIMEOUT_S = 3  # the gateway's --request-timeout here: a hung shadow copy gives up after it


@pytest.fixture(scope="module")
def shadowed(tracking_uri, served_model, tmp_path_factory):
    state = tmp_path_factory.mktemp("shadow") / "state"
    w = Watcher(tracking_uri, state, [served_model.name], "--aliases", "Production,challenger",
                "--request-timeout", str(TIMEOUT_S)).start()
    model, (v1, v2, _) = served_model.name, served_model.good
    w.serving(model, DEPLOY_TIMEOUT, Production=v1, challenger=v2)
    yield w
    if mt.list_shadows(model):
        mt.clear_shadow(model)
    w.stop()


def _invoke(watcher: Watcher, model: str) -> tuple[int, float]:
    started = time.monotonic()
    status, headers, _ = watcher.invoke(model, "Production", IRIS_SPLIT)
    return status, time.monotonic() - started


def test_every_copy_is_sent_and_compared(shadowed, served_model):
    model, v2 = served_model.name, served_model.good[1]
    mt.set_shadow(model, "challenger", percent=100)
    wait_for(lambda: (shadowed.endpoints()["Production"].get("shadow") or {}).get("version") == v2, 10,
             what="the shadow in the route table")
    before = shadowed.metric("autoserve_shadow_requests_total", result="ok")
    answers = [_invoke(shadowed, model) for _ in range(30)]
    assert {status for status, _ in answers} == {200}
    wait_for(lambda: shadowed.metric("autoserve_shadow_requests_total", result="ok") == before + 30, 10,
             what="30 shadow copies answered")
    compared = shadowed.metric("autoserve_shadow_compared_total", alias="challenger", version=str(v2))
    agreed = shadowed.metric("autoserve_shadow_agreement_total", alias="challenger", version=str(v2))
    assert compared >= 60 and 0 < agreed <= compared  # 2 rows per request: labels compared one by one
    assert shadowed.metric("autoserve_shadow_latency_seconds_count", alias="challenger") >= 30


def test_a_hung_shadow_never_slows_the_callers(shadowed, served_model):
    model, v2 = served_model.name, served_model.good[1]
    pid = next(r["pid"] for r in shadowed.records() if r["version"] == v2)
    timeouts = shadowed.metric("autoserve_shadow_requests_total", result="timeout")
    os.killpg(pid, signal.SIGSTOP)
    try:
        answers = [_invoke(shadowed, model) for _ in range(20)]
    finally:
        time.sleep(TIMEOUT_S + 1)
        os.killpg(pid, signal.SIGCONT)
    assert {status for status, _ in answers} == {200}
    assert max(seconds for _, seconds in answers) < 1.0, answers  # copies wait, callers do not
    assert shadowed.metric("autoserve_shadow_requests_total", result="timeout") > timeouts


def test_a_cleared_shadow_gets_no_more_copies(shadowed, served_model):
    model = served_model.name
    mt.clear_shadow(model)
    wait_for(lambda: shadowed.endpoints()["Production"].get("shadow") is None, 10, what="shadow gone from the table")
    time.sleep(TIMEOUT_S)  # copies still queued from the previous test drain first
    sent = shadowed.metric("autoserve_shadow_requests_total")
    assert {_invoke(shadowed, model)[0] for _ in range(10)} == {200}
    time.sleep(1)
    assert shadowed.metric("autoserve_shadow_requests_total") == sent
