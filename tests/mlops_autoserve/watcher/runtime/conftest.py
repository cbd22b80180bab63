"""A real Docker engine and the serving image, for the Docker-runtime tests.

CI installs docker.io, starts dockerd and builds the serving image from a Debian base made
from this machine's apt mirror (no registry is reachable); its tag comes in
$MLOPS_TEST_SERVING_IMAGE.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import need

SERVING_IMAGE = os.environ.get("MLOPS_TEST_SERVING_IMAGE", "mlops-toolkit/serving:latest")


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        need(False, f"no Docker engine answers: {exc}")
    try:
        client.images.get(SERVING_IMAGE)
    except docker.errors.ImageNotFound:
        need(False, f"serving image {SERVING_IMAGE} is missing (build: see .ci/run)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def serving_image(docker_client) -> str:
    return SERVING_IMAGE
