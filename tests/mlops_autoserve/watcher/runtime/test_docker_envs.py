"""Models the serving image cannot load, served from images derived from it (Docker
runtime): real Docker engine, real uv inside the build, real packages from the index."""

from __future__ import annotations

import pytest
from mlops_autoserve.watcher.reconciler import ERROR_TAG

import mlops_toolkit as mt
from tests.harness import Watcher, http_json, wait_for
from tests.mlops_autoserve.watcher.test_environments import IRIS, NAMES

pytestmark = pytest.mark.slow
BUILD_TIMEOUT = 300


@pytest.fixture(scope="module")
def watcher(docker_client, serving_image, tracking_uri, env_models, tmp_path_factory):
    state = tmp_path_factory.mktemp("autoserve-docker-envs") / "state"
    base_id = docker_client.images.get(serving_image).id
    w = Watcher(tracking_uri, state, [env_models.lightgbm, env_models.emoji], "--runtime", "docker",
                "--docker-image", serving_image, "--aliases", "dockerenv").start()
    yield w
    assert w.stop() == 0
    for image in docker_client.images.list(filters={"label": ["mlops.env=true", f"mlops.env.base={base_id}"]}):
        if any(t.split(":")[-1] in _built_by(w) for t in image.tags):
            docker_client.images.remove(image.id, force=True)  # what this module built, nothing else


def _built_by(watcher: Watcher) -> set[str]:
    found = set()
    for line in watcher.log_path.read_text().splitlines():
        if '"environment built"' in line and '"env": "' in line:
            found.add(line.split('"env": "')[1][:16])
    return found


def _endpoint(watcher: Watcher, model: str) -> dict | None:
    _, _, data = http_json("GET", watcher.admin_url + "/endpoints")
    return next((e for e in data if e["model"] == model and e["alias"] == "dockerenv"), None)


def _serving(watcher: Watcher, model: str, version: int) -> dict:
    return wait_for(lambda: (e := _endpoint(watcher, model)) and e["state"] == "ready" and e["version"] == version
                    and e, BUILD_TIMEOUT, interval=0.5, what=f"{model} v{version} serving ({watcher.log_path})")


def _invoke(watcher: Watcher, model: str, payload: dict):
    return http_json("POST", f"{watcher.url}/serve/{model}/dockerenv/invocations", payload)


def _container(docker_client, model: str, version: int):
    found = docker_client.containers.list(filters={"label": ["mlops.autoserve=true", f"mlops.model={model}",
                                                             f"mlops.version={version}"]})
    assert len(found) == 1
    return found[0]


def test_lightgbm_serves_from_a_derived_image_built_once(watcher, env_models, docker_client, serving_image):
    model, (v1, v2) = env_models.lightgbm, env_models.lightgbm_versions
    mt.set_alias(model, "dockerenv", v1)
    _serving(watcher, model, v1)
    status, headers, body = _invoke(watcher, model, IRIS)
    assert status == 200 and headers["X-Model-Version"] == str(v1) and body == {"predictions": [0, 2]}
    container = _container(docker_client, model, v1)
    env = container.labels["mlops.env"]
    image = docker_client.images.get(container.attrs["Config"]["Image"])
    assert image.labels["mlops.env.key"] == env and image.labels["mlops.env.base"] == \
        docker_client.images.get(serving_image).id
    assert container.attrs["Config"]["User"] == "10001"  # the derived image keeps the unprivileged user
    layer = image.attrs["Size"] - docker_client.images.get(serving_image).attrs["Size"]
    assert 0 < layer < 200 * 1024**2  # only what LightGBM adds, not a second copy of the serving image
    built = watcher.metric("autoserve_env_resolve_total", outcome="built")
    # the second version, same requirements: the same image, no build
    mt.set_alias(model, "dockerenv", v2)
    _serving(watcher, model, v2)
    assert _invoke(watcher, model, IRIS)[1]["X-Model-Version"] == str(v2)
    assert _container(docker_client, model, v2).labels["mlops.env"] == env
    assert watcher.metric("autoserve_env_resolve_total", outcome="built") == built
    assert watcher.metric("autoserve_env_resolve_total", outcome="hit") >= 1


def test_custom_pyfunc_importing_a_missing_package_is_served(watcher, env_models):
    model, version = env_models.emoji, env_models.emoji_version
    mt.set_alias(model, "dockerenv", version)
    _serving(watcher, model, version)
    status, _, body = _invoke(watcher, model, NAMES)
    assert status == 200 and body == {"predictions": ["\N{THUMBS UP SIGN}", "\N{SNAKE}"]}
    _, _, listing = http_json("GET", f"{watcher.watcher_url}/envs")
    assert listing["runtime"] == "docker"
    assert any(any(r.startswith("emoji==") for r in e["requirements"]) and e["in_use"] for e in listing["environments"])


def test_unresolvable_requirements_are_contained(watcher, env_models, mlflow_client):
    model, good, bad = env_models.emoji, env_models.emoji_version, env_models.unresolvable
    mt.set_alias(model, "dockerenv", bad)
    endpoint = wait_for(lambda: (e := _endpoint(watcher, model)) and e["state"] == "failed" and e, BUILD_TIMEOUT,
                        what="failed state")
    assert "environment build failed" in endpoint["last_error"]
    assert "mlops-toolkit-no-such-package" in endpoint["last_error"]
    assert _invoke(watcher, model, NAMES)[1]["X-Model-Version"] == str(good)
    assert "mlops-toolkit-no-such-package" in mlflow_client.get_model_version(model, str(bad)).tags[ERROR_TAG]
    mt.set_alias(model, "dockerenv", good)
    _serving(watcher, model, good)
