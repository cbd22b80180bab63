"""Per-model isolation and route flips on real ``mlflow models serve`` processes, one
watcher for both (``--poll-interval 1``):

* garbage in model A's tags never stops model B's alias moves, A shows why on its route,
  in ``mlops serve status`` and ``autoserve_model_errors``, and recovers once fixed;
* a move is one cycle: moving an alias to a version that already serves another alias
  takes effect within one poll interval plus one cycle, every time.

Every kind of garbage in every tag is tried in milliseconds per cycle in test_isolation.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

import mlops_toolkit as mt
from tests.harness import Watcher, wait_for

pytestmark = pytest.mark.slow
POLL = 1.0
DEPLOY_TIMEOUT = 120


@pytest.fixture(scope="module")
def two(served_model, tracking_uri, tmp_path_factory):
    """A: the served model; B: a second model whose versions are A's artifacts (servable, no logging)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    a, b = served_model.name, f"iso-b-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(b)
    for version in served_model.good[:2]:
        source = client.get_model_version(a, str(version))
        client.create_model_version(b, source=source.source, run_id=source.run_id,
                                    model_id=source.model_id or source.source.removeprefix("models:/"))
    state = tmp_path_factory.mktemp("isolation") / "state"
    watcher = Watcher(tracking_uri, state, [a, b], "--aliases", "Production,challenger,staging",
                      poll_interval=POLL).start()
    watcher.serving(a, DEPLOY_TIMEOUT, Production=served_model.good[0])
    wait_for(lambda: watcher.endpoints().get("Production"), 10, what="A routed")
    for alias, version in (("Production", 1), ("staging", 1), ("challenger", 2)):
        mt.set_alias(b, alias, version)
    wait_for(lambda: all(_version(watcher, b, alias) == v for alias, v in (("Production", 1), ("challenger", 2))),
             DEPLOY_TIMEOUT, what="B serving v1 and v2")
    yield a, b, watcher, client
    watcher.stop()
    client.delete_registered_model(b)


def _version(watcher: Watcher, model: str, alias: str) -> int | None:
    status, headers, _ = watcher.invoke(model, alias)
    return int(headers["X-Model-Version"]) if status == 200 else None


def _flip(watcher: Watcher, model: str, version: int) -> float:
    """Seconds from moving model@Production to version until the gateway answers from it."""
    moved = time.monotonic()
    mt.set_alias(model, "Production", version)
    wait_for(lambda: _version(watcher, model, "Production") == version, 30, interval=0.05,
             what=f"{model}@Production answering from v{version}")
    return time.monotonic() - moved


GARBAGE = {
    "mlops.rollout.Production": json.dumps({"to": "challenger", "candidate": 2, "baseline": 1, "steps": [],
                                            "step_seconds": 60, "max_error_rate": 0.01, "max_p95_ms": 500}),
    "mlops.shadow.Production": '{"alias": ["nested"]}',
    "mlops.autoserve.replicas": "NaN",
    "mlops.autoserve.max_replicas": "-1",
}


def test_garbage_in_one_models_tags_never_stops_another_models_moves(two, mlops_script):
    a, b, watcher, client = two
    took = []
    for tag, raw in GARBAGE.items():
        client.set_registered_model_tag(a, tag, raw)
        took.append(_flip(watcher, b, 2 if _version(watcher, b, "Production") == 1 else 1))
    assert max(took) <= 3 * POLL + 1.5, took  # within three cycles each time (they take a fraction of a second)
    endpoint = wait_for(lambda: (e := next(x for x in _endpoints(watcher) if x["model"] == a))
                        ["problems"] and len(e["problems"]) == len(GARBAGE) and e, 10, what="A's problems shown")
    assert any("steps must be a list" in p for p in endpoint["problems"]), endpoint
    assert endpoint["state"] == "ready" and _version(watcher, a, "Production") is not None  # A still serves
    assert watcher.metric("autoserve_model_errors", model=a, reason="rollout") == 1
    status = mlops_script("serve", "status", "--gateway-admin", watcher.admin_url)
    assert "ignored tag mlops.rollout.Production: steps must be a list" in status.stdout, status.stdout

    for tag in GARBAGE:
        client.delete_registered_model_tag(a, tag)
    wait_for(lambda: not next(x for x in _endpoints(watcher) if x["model"] == a)["problems"], 10,
             what="A recovered once its tags were fixed")
    assert watcher.metric("autoserve_model_errors", model=a) == 0


def test_ten_moves_between_serving_versions_each_take_effect_within_a_poll_and_a_cycle(two):
    _, b, watcher, _ = two
    took = []
    for _ in range(10):  # staging keeps v1 serving, challenger keeps v2: each move is a route flip
        took.append(_flip(watcher, b, 2 if _version(watcher, b, "Production") == 1 else 1))
    print(f"route flips: {', '.join(f'{t:.2f}' for t in took)} s")
    assert max(took) <= POLL + 1.5, took  # one poll interval, one cycle, the gateway's 0.1 s table poll


def _endpoints(watcher: Watcher) -> list[dict]:
    from tests.harness import http_json

    return http_json("GET", watcher.admin_url + "/endpoints")[2]
