"""Models the serving environment cannot load, served from environments built with uv
(process runtime): real MLflow, real uv, real packages from the machine's index.

The models come from an authoring environment with LightGBM and emoji; the watcher runs in
the test suite's own environment, which has neither (the fixture checks).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from mlops_autoserve.metrics import AutoserveMetrics
from mlops_autoserve.settings import AutoserveSettings
from mlops_autoserve.watcher.environments import EnvBuildError, Environments
from mlops_autoserve.watcher.envspec import this_interpreter
from mlops_autoserve.watcher.envstore import ProcessEnvs
from mlops_autoserve.watcher.reconciler import ERROR_TAG
from mlops_autoserve.watcher.runtime.base import DeploymentKey

import mlops_toolkit as mt
from tests.harness import Watcher, http_json, wait_for
from tests.mlops_autoserve.watcher.buildfaults import StuckIndex, register_requirements

pytestmark = pytest.mark.slow
BUILD_TIMEOUT = 300  # a cold build downloads from the index; seconds, not minutes, when it answers
IRIS = {"dataframe_split": {"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
                            "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}}
NAMES = {"dataframe_split": {"columns": ["name"], "data": [["thumbsup"], ["snake"]]}}


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("env-cache")


@pytest.fixture(scope="module")
def watcher(tracking_uri, env_models, env_cache, tmp_path_factory):
    state = tmp_path_factory.mktemp("autoserve-envs") / "state"
    w = Watcher(tracking_uri, state, [env_models.lightgbm, env_models.emoji], "--env-cache", str(env_cache),
                "--aliases", "envprod").start()
    yield w
    assert w.stop() == 0


def _endpoint(watcher: Watcher, model: str, alias: str = "envprod") -> dict | None:
    _, _, data = http_json("GET", watcher.admin_url + "/endpoints")
    return next((e for e in data if e["model"] == model and e["alias"] == alias), None)


def _wait_serving(watcher: Watcher, model: str, version: int, seen_building: list | None = None) -> dict:
    """Wait for envprod on ``version``; note every build the gateway's /endpoints showed meanwhile."""
    def ready():
        endpoint = _endpoint(watcher, model)
        if seen_building is not None and endpoint and endpoint.get("building"):
            seen_building.append(endpoint["building"])
        return endpoint if endpoint and endpoint["state"] == "ready" and endpoint["version"] == version else None

    return wait_for(ready, BUILD_TIMEOUT, interval=0.2, what=f"v{version} serving ({watcher.log_path})")


def _invoke(watcher: Watcher, model: str, payload: dict):
    return http_json("POST", f"{watcher.url}/serve/{model}/envprod/invocations", payload)


def _envs(watcher: Watcher, kind: str = "env") -> list[dict]:
    """The built environments (kind "env"), or uv's download cache row ("download-cache")."""
    _, _, data = http_json("GET", f"{watcher.watcher_url}/envs")
    return [e for e in data["environments"] if e["kind"] == kind]


def test_lightgbm_model_is_served_from_an_environment_built_before_the_switch(watcher, env_models, env_cache):
    model, v1 = env_models.lightgbm, env_models.lightgbm_versions[0]
    builds: list[dict] = []
    mt.set_alias(model, "envprod", v1)
    _wait_serving(watcher, model, v1, builds)
    status, headers, body = _invoke(watcher, model, IRIS)
    assert status == 200 and headers["X-Model-Version"] == str(v1) and body == {"predictions": [0, 2]}
    # the route showed the build while it ran (status, /endpoints), with the installer's progress
    assert builds and builds[0]["version"] == v1 and len(builds[0]["env"]) == 16
    record = next(r for r in watcher.records() if r["model"] == model)
    assert record["env"] == builds[0]["env"]
    argv0 = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert argv0 == str(env_cache / record["env"] / "bin" / "python")  # not the watcher's Python
    assert watcher.metric("autoserve_env_resolve_total", outcome="built") == 1
    assert watcher.metric("autoserve_env_build_seconds_count", result="success") == 1
    envs = _envs(watcher)
    assert [(e["key"], e["in_use"]) for e in envs] == [(record["env"], True)]
    assert envs[0]["size_bytes"] > 10 * 1024**2 and any(r.startswith("lightgbm==") for r in envs[0]["requirements"])
    # uv's download cache, shown beside them: what only it holds (the installed files are links)
    [cache] = _envs(watcher, "download-cache")
    assert cache["location"] == str(env_cache / ".uv-cache") and 0 < cache["size_bytes"] < envs[0]["size_bytes"]


def test_second_version_with_the_same_requirements_needs_no_build(watcher, env_models):
    model, v2 = env_models.lightgbm, env_models.lightgbm_versions[1]
    before = watcher.metric("autoserve_env_resolve_total", outcome="hit")
    mt.set_alias(model, "envprod", v2)
    _wait_serving(watcher, model, v2)
    assert _invoke(watcher, model, IRIS)[1]["X-Model-Version"] == str(v2)
    assert watcher.metric("autoserve_env_resolve_total", outcome="built") == 1  # still the one build
    assert watcher.metric("autoserve_env_resolve_total", outcome="hit") == before + 1
    assert len(_envs(watcher)) == 1


def test_custom_pyfunc_importing_a_missing_package_is_served(watcher, env_models):
    model, version = env_models.emoji, env_models.emoji_version
    mt.set_alias(model, "envprod", version)
    _wait_serving(watcher, model, version)
    status, headers, body = _invoke(watcher, model, NAMES)
    assert status == 200 and body == {"predictions": ["\N{THUMBS UP SIGN}", "\N{SNAKE}"]}
    assert watcher.metric("autoserve_env_resolve_total", outcome="built") == 2
    assert len(_envs(watcher)) == 2


def test_unresolvable_requirements_are_contained_with_the_reason_on_the_version(watcher, env_models, mlflow_client):
    model, good, bad = env_models.emoji, env_models.emoji_version, env_models.unresolvable
    mt.set_alias(model, "envprod", bad)
    endpoint = wait_for(lambda: (e := _endpoint(watcher, model)) and e["state"] == "failed" and e,
                        BUILD_TIMEOUT, what="failed state")
    assert "environment build failed" in endpoint["last_error"]
    assert "mlops-toolkit-no-such-package" in endpoint["last_error"]
    status, headers, _ = _invoke(watcher, model, NAMES)
    assert status == 200 and headers["X-Model-Version"] == str(good)  # the old version kept serving
    tag = mlflow_client.get_model_version(model, str(bad)).tags[ERROR_TAG]
    assert "environment build failed" in tag and "mlops-toolkit-no-such-package" in tag
    assert watcher.metric("autoserve_env_build_seconds_count", result="failed") >= 1
    mt.set_alias(model, "envprod", good)
    _wait_serving(watcher, model, good)


def test_serve_envs_lists_sizes_and_use(watcher, env_models, mlops_script):
    result = mlops_script("serve", "envs", "--watcher", watcher.watcher_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ENV", "SIZE", "BUILT", "IN"]
    rows = {line.split()[0]: line for line in lines[1:]}
    cache = rows.pop(".uv-cache")  # uv's download cache has a row of its own, with its size
    assert float(cache.split()[1]) > 0 and cache.split()[2] in ("B", "KB", "MB", "GB")
    assert cache.rstrip().endswith("/.uv-cache")
    assert len(rows) == 2 and all(" MB " in row for row in rows.values())
    assert any("lightgbm==" in row for row in rows.values()) and any("emoji==" in row for row in rows.values())
    as_json = json.loads(mlops_script("serve", "envs", "--watcher", watcher.watcher_url, "--json").stdout)
    assert as_json["env_manager"] == "auto" and [e["kind"] for e in as_json["environments"]].count("env") == 2


def test_idle_environments_are_removed_and_those_in_use_kept(watcher, env_models, env_cache, tracking_uri):
    """The clean-up's rule on the real cache: idle past the limit and unused goes, in use stays."""
    mt.delete_alias(env_models.lightgbm, "envprod")
    wait_for(lambda: all(r["model"] != env_models.lightgbm for r in watcher.records()), 60, what="LightGBM stopped")
    in_use = {r["env"] for r in watcher.records() if r.get("env")}
    assert len(in_use) == 1  # the emoji model's environment serves; LightGBM's is idle now
    long_ago = time.time() - 3 * 86400
    for ready in env_cache.glob("*/mlops-env.json"):
        marker = ready.parent / ".mlops-last-used"
        marker.touch()
        os.utime(marker, (long_ago, long_ago))
    settings = AutoserveSettings(tracking_uri=tracking_uri, env_cache=env_cache, env_max_idle_days=1)
    environments = Environments(settings, AutoserveMetrics(), ProcessEnvs(env_cache, 60))
    environments.maybe_prune(in_use)
    assert {e.key for e in ProcessEnvs(env_cache, 60).list()} == in_use
    assert environments.metrics.env_removed_total.labels("idle")._value.get() == 1


def test_env_manager_local_serves_from_the_serving_environment(tracking_uri, env_models, served_model, tmp_path):
    """--env-manager local: nothing resolved or built; a model needing more fails to load (contained)."""
    w = Watcher(tracking_uri, tmp_path / "state", [served_model.name, env_models.lightgbm], "--env-manager", "local",
                "--aliases", "envlocal").start()
    try:
        w.serving(served_model.name, envlocal=served_model.good[0])
        mt.set_alias(env_models.lightgbm, "envlocal", env_models.lightgbm_versions[0])

        def settled():
            rows = {r["model"]: r for r in _status_rows(w)}
            return len(rows) == 2 and rows[env_models.lightgbm]["state"] == "failed" and rows

        rows = wait_for(settled, 150, what="the LightGBM route failed")
        assert rows[served_model.name]["state"] == "ready"
        assert "lightgbm" in rows[env_models.lightgbm]["last_error"].lower()
        assert all(r.get("env") is None for r in w.records())
        assert w.metric("autoserve_env_resolve_total") == 0
        assert this_interpreter().packages.get("lightgbm") is None
    finally:
        assert w.stop() == 0
        mt.delete_alias(env_models.lightgbm, "envlocal")


def _status_rows(watcher: Watcher) -> list[dict]:
    _, _, data = http_json("GET", watcher.admin_url + "/endpoints")
    return data


# -- one build per environment, shared (no watcher: Environments on a real uv and a real registry) --
def _environments(tracking_uri: str, cache: Path, backoff_initial: float, backoff_max: float) -> Environments:
    settings = AutoserveSettings(tracking_uri=tracking_uri, env_cache=cache, backoff_initial=backoff_initial,
                                 backoff_max=backoff_max)
    return Environments(settings, AutoserveMetrics(), ProcessEnvs(cache, 120))


def _builds(environments: Environments, result: str = "failed") -> float:
    """uv builds run to their end, by result."""
    return environments.metrics.registry.get_sample_value("autoserve_env_build_seconds_count", {"result": result}) or 0


def _prepare_error(environments: Environments, key: DeploymentKey) -> str:
    with pytest.raises(EnvBuildError) as failed:
        environments.prepare(key)
    return str(failed.value)


def test_replicas_and_versions_of_one_environment_wait_for_one_build_and_share_its_failure(
        tracking_uri, mlflow_client, tmp_path, monkeypatch):
    monkeypatch.setenv("UV_HTTP_TIMEOUT", "300")  # uv waits on the stuck index until the test closes it
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    name = f"stuck-{uuid.uuid4().hex[:6]}"
    with StuckIndex() as index:
        v1, v2 = register_requirements(mlflow_client, name, [f"--index-url {index.url}", "mlops-stuck-package==1.0"],
                                       versions=2)  # the same requirements: one environment
        environments = _environments(tracking_uri, tmp_path, backoff_initial=60, backoff_max=60)
        errors: list[str] = []
        callers = [threading.Thread(target=lambda k=key: errors.append(_prepare_error(environments, k)))
                   for key in (DeploymentKey(name, v) for v in (v1, v1, v2, v2))]  # two replicas of each
        for caller in callers:
            caller.start()
        wait_for(lambda: index.connections and set(environments.building()) == {(name, v1), (name, v2)}, 30,
                 what="one build on the stuck index, both versions shown waiting on it")
        time.sleep(0.5)  # every caller has long reached the build or the wait for it
        assert environments.metrics.env_builds_in_progress._value.get() == 1  # one uv, not four
        assert len({b.env for b in environments.building().values()}) == 1
        index.close()  # the build fails now (connection refused)
        for caller in callers:
            caller.join(30)
    assert len(errors) == 4 and len(set(errors)) == 1, errors  # every caller failed once, with the same reason
    assert errors[0].startswith("environment build failed: ") and "127.0.0.1" in errors[0]
    assert _builds(environments) == 1 and environments.building() == {}
    started = time.monotonic()  # a replica queued behind the build: the same error at once, no new build
    assert _prepare_error(environments, DeploymentKey(name, v2)) == errors[0]
    assert time.monotonic() - started < 1.0 and _builds(environments) == 1


def test_a_failed_environment_is_built_again_only_after_its_back_off_which_doubles(
        tracking_uri, mlflow_client, tmp_path, monkeypatch):
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    with StuckIndex() as index:
        url = index.url  # closed below: every build of this key fails at once (connection refused)
    name = f"refused-{uuid.uuid4().hex[:6]}"
    (version,) = register_requirements(mlflow_client, name, [f"--index-url {url}", "mlops-refused-package==1.0"])
    key = DeploymentKey(name, version)
    environments = _environments(tracking_uri, tmp_path, backoff_initial=1.5, backoff_max=3.0)

    def attempt() -> tuple[str, float]:
        error = _prepare_error(environments, key)
        return error, time.monotonic()

    error, failed_at = attempt()
    assert _builds(environments) == 1 and "Connection refused" in error
    assert attempt()[0] == error and _builds(environments) == 1  # backing off: the remembered error, no build
    time.sleep(max(0.0, failed_at + 1.5 + 0.3 - time.monotonic()))
    error, failed_at = attempt()
    assert _builds(environments) == 2  # the back-off is over: built (and failed) again
    time.sleep(1.5 + 0.3)  # past the first back-off, inside the doubled one
    assert attempt()[0] == error and _builds(environments) == 2
    time.sleep(max(0.0, failed_at + 3.0 + 0.3 - time.monotonic()))
    attempt()
    assert _builds(environments) == 3
