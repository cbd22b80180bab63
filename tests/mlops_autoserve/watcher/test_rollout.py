"""Canary rollouts on real ``mlflow models serve`` processes: a good candidate takes the
alias step by step, a bad one is rolled back at its first step; callers never see a failure."""

from __future__ import annotations

import pytest

import mlops_toolkit as mt
from mlops_toolkit import rollout as rollouts
from mlops_toolkit.governance import acting_user
from tests.harness import LoadClient, Watcher, wait_for

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 120


@pytest.fixture(scope="module")
def watcher(tracking_uri, served_model, tmp_path_factory):
    state = tmp_path_factory.mktemp("rollout") / "state"
    w = Watcher(tracking_uri, state, [served_model.name], "--aliases", "Production,challenger").start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def disagreeing(served_model, iris_data, tracking_uri):
    """A version that always answers class 1: it serves fine, and disagrees with every
    answer of the good versions on the harness's payload (classes 0 and 2). Deleted after
    the module so other tests see the model as they expect."""
    from sklearn.dummy import DummyClassifier

    X, y = iris_data
    with mt.start_run("always class 1") as run:
        version = run.log_model(DummyClassifier(strategy="constant", constant=1).fit(X, y),
                                register_as=served_model.name, input_example=X[:3])
    yield version
    from mlflow import MlflowClient

    MlflowClient(tracking_uri, registry_uri=tracking_uri).delete_model_version(served_model.name, str(version))


def _path(model: str) -> str:
    return f"/serve/{model.replace(' ', '%20')}/Production/invocations"


def test_a_good_candidate_takes_the_alias_step_by_step(watcher, served_model, monkeypatch):
    """... and the promotion is the watcher's: the starter is recorded as requested_by."""
    model, (v1, v2, _) = served_model.name, served_model.good
    watcher_user = acting_user()  # as the watcher process started: it keeps its own user
    monkeypatch.setenv("MLOPS_USER", "ana-the-starter")
    watcher.serving(model, DEPLOY_TIMEOUT, Production=v1, challenger=v2)
    with LoadClient(watcher.port, _path(model)) as load:
        wait_for(lambda: load.sent > 20, 10, what="load running")
        started = rollouts.start_rollout(model, "challenger", steps=(50, 100), step_seconds=2, max_error_rate=0.05,
                                         max_p95_ms=5000, min_agreement=0.9)
        assert str(started) == f"{model}@Production: rollout of v{v2} (from challenger) over v{v1}, step 1/2 at 50%"
        wait_for(lambda: load.versions.get(str(v2), 0) > 20, 30, what="the candidate answering its share")
        assert load.versions.get(str(v1), 0) > 20  # both versions answer during the first step
        done = wait_for(lambda: (r := rollouts.rollout_status(model)).state != "running" and r, 60, what="rollout ended")
        wait_for(lambda: watcher.endpoint_ready("Production", v2), 30, what="Production on the candidate")
    assert done.state == "passed", done
    assert mt.get_alias(model, "Production").version == v2
    promotion = mt.alias_history(model, "Production")[-1]
    assert promotion.reason.startswith("rollout: rollout passed 2 steps")
    assert (promotion.user, promotion.requested_by) == (watcher_user, "ana-the-starter")
    assert load.failed == 0, load.codes
    assert 'autoserve_rollout_total{model="%s",result="passed"}' % model in watcher.metrics_text()


def test_a_candidate_that_misses_its_gate_is_rolled_back_at_the_first_step(watcher, served_model, mlflow_client):
    model, (v1, v2, _) = served_model.name, served_model.good
    watcher.serving(model, DEPLOY_TIMEOUT, Production=v1, challenger=v2)
    with LoadClient(watcher.port, _path(model)) as load:
        wait_for(lambda: load.sent > 20, 10, what="load running")
        rollouts.start_rollout(model, "challenger", steps=(25, 100), step_seconds=2, max_p95_ms=0.001)
        done = wait_for(lambda: (r := rollouts.rollout_status(model)).state != "running" and r, 60, what="rollout ended")
        wait_for(lambda: watcher.endpoints()["Production"]["canary"] is None, 2, interval=0.05,
                 what="the canary gone from the gateway's table")
        # The one request in flight when the canary left may still be the canary's (it was
        # routed before): the closed-loop client has one at a time, so skip one.
        settled = load.sent + 1
        wait_for(lambda: load.sent > settled + 50, 10, what="load after the rollback")
        after = [v for t, code, v in load.events[settled:]]
    assert done.state == "failed" and "step 1/2 at 25% failed: p95" in done.reason, done
    assert mt.get_alias(model, "Production").version == v1  # never moved
    assert set(after) == {str(v1)}  # all traffic back on the baseline
    assert load.failed == 0, load.codes
    assert "p95" in mlflow_client.get_model_version(model, str(v2)).tags["mlops.rollout.result"]


def test_a_candidate_that_disagrees_with_production_is_rolled_back_at_the_first_step(watcher, served_model,
                                                                                      disagreeing):
    """Healthy and fast, but wrong: only the agreement gate can catch it. The requests
    Production answers are copied to the candidate and compared; the step fails on them."""
    model, v1 = served_model.name, served_model.good[0]
    watcher.serving(model, DEPLOY_TIMEOUT, Production=v1, challenger=disagreeing)
    with LoadClient(watcher.port, _path(model)) as load:
        wait_for(lambda: load.sent > 20, 10, what="load running")
        rollouts.start_rollout(model, "challenger", steps=(10, 100), step_seconds=2, max_error_rate=0.05,
                               max_p95_ms=5000, min_agreement=0.9)
        wait_for(lambda: (watcher.endpoints()["Production"].get("shadow") or {}).get("version") == disagreeing, 30,
                 what="the candidate shadowing Production")
        done = wait_for(lambda: (r := rollouts.rollout_status(model)).state != "running" and r, 60, what="rollout ended")
        wait_for(lambda: watcher.endpoints()["Production"]["canary"] is None, 2, interval=0.05,
                 what="the canary gone from the gateway's table")
    assert done.state == "failed", done
    assert "step 1/2 at 10% failed: agreement 0.00% < 90.00%" in done.reason, done.reason
    assert mt.get_alias(model, "Production").version == v1
    assert load.failed == 0, load.codes
    assert watcher.endpoints()["Production"].get("shadow") is None  # the rollout's shadow ended with it


def test_bad_rollouts_are_refused_in_one_line(watcher, served_model, mlops_script):
    model, (v1, v2, _) = served_model.name, served_model.good
    mt.set_alias(model, "Production", v1)
    mt.set_alias(model, "challenger", v2)
    for args, message in [
        (["--steps", "50,25,100"], "steps must be increasing percentages ending at 100"),
        (["--steps", "5,50"], "steps must be increasing percentages ending at 100"),
        (["--to", "nobody"], "has no alias 'nobody'"),
        (["--to", "Production"], "which " + f"{model}@Production already serves"),
        (["--min-agreement", "1.5"], "--min-agreement"),
        (["--steps", "100", "--min-agreement", "0.9"], "a comparison gate needs a step below 100%"),
    ]:
        argv = ["rollout", "start", model, *(["--to", "challenger"] if "--to" not in args else []), *args]
        result = mlops_script(*argv)
        assert result.returncode == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    mlops_script("rollout", "start", model, "--to", "challenger", "--step-seconds", "600")
    again = mlops_script("rollout", "start", model, "--to", "challenger")
    assert again.returncode == 2 and "a rollout is already running" in again.stderr
    aborted = mlops_script("rollout", "abort", model)
    assert aborted.returncode == 0 and " aborted: aborted by " in aborted.stdout, aborted.stdout
    assert rollouts.rollout_status(model).state == "aborted"


def test_a_watcher_restart_mid_rollout_resumes_it(watcher, served_model):
    """The rollout lives in the registry: a watcher killed during a step is back on the same
    step, and the rollout still ends with the alias moved and no failed request."""
    import signal

    model, (v1, v2, _) = served_model.name, served_model.good
    watcher.serving(model, DEPLOY_TIMEOUT, Production=v1, challenger=v2)
    with LoadClient(watcher.port, _path(model)) as load:
        wait_for(lambda: load.sent > 20, 10, what="load running")
        rollouts.start_rollout(model, "challenger", steps=(50, 100), step_seconds=6, max_error_rate=0.05,
                               max_p95_ms=5000)
        wait_for(lambda: load.versions.get(str(v2), 0) > 10, 30, what="the candidate answering")
        watcher.stop(signal.SIGKILL)  # mid-step; the gateway keeps the split it was given
        assert rollouts.rollout_status(model).step == 0
        watcher.start()
        done = wait_for(lambda: (r := rollouts.rollout_status(model)).state != "running" and r, 60, what="rollout ended")
        wait_for(lambda: watcher.endpoint_ready("Production", v2), 30, what="Production on the candidate")
    assert done.state == "passed", done
    assert load.failed == 0, load.codes
