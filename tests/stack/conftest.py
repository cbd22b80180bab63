"""The project's images for the stack tests, built once per session with the real
``docker build`` (build-images.sh: tags are content hashes, an existing image is reused).

CI has no registry: the images build on the Debian base that .ci/run makes from the
machine's apt mirror (services/autoserve/docker/build-base-image.sh); elsewhere the same
Dockerfiles use the public python image.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.conftest import IN_CI, need, repo_root

ROOT = repo_root()
BASE = "mlops-toolkit/python-base:bookworm"
# Everything the compose stack runs from a local image on a host without Docker Hub.
IMAGES = ("serving", "autoserve", "mlflow", "airflow", "offline-postgres", "offline-prometheus",
          "offline-pushgateway", "offline-blackbox", "offline-s3")


def compose_env() -> dict[str, str]:
    """This process's environment for docker-compose, minus the variables a .env file sets:
    compose lets the shell's value win, so a stray POSTGRES_PASSWORD would hide the file's."""
    return {k: v for k, v in os.environ.items()
            if k.isupper() and not k.startswith(("POSTGRES_", "MINIO_", "AIRFLOW_"))}


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def base_args() -> list[str]:
    """--local-base where the registry-free base exists (CI builds it), else the public image."""
    return ["--local-base"] if docker("image", "inspect", BASE).returncode == 0 else []


def build_images(*names: str, timeout: float = 1800) -> list[str]:
    result = subprocess.run(["bash", str(ROOT / "services/autoserve/docker/build-images.sh"), *base_args(), *names],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Name -> tag of every project image (serving, autoserve, mlflow, airflow, offline-*)."""
    try:
        engine = docker("info", timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        engine = False
    need(engine, "no Docker engine answers (see .ci/run for how CI starts one)")
    need(bool(base_args()) or not IN_CI, f"{BASE} is missing: .ci/run builds it before the tests")
    started = time.monotonic()
    tags = build_images(*IMAGES)
    print(f"\nimages {tags} ready in {time.monotonic() - started:.0f} s")
    assert len(tags) == len(IMAGES) and all(t.startswith("mlops-toolkit/") for t in tags)
    return dict(zip(IMAGES, tags, strict=True))
