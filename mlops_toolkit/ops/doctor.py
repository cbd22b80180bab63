"""Health checks for the pieces a user needs: tracking server, registry, artifacts, Docker.

Each check is independent and reports a one-line detail, so ``mlops doctor`` can print a
table that says exactly what is wrong.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlops_toolkit import http
from mlops_toolkit.config import registry, settings
from mlops_toolkit.connection import PROBE_TIMEOUT_S, probe_tracking_server
from mlops_toolkit.errors import one_line

DOCTOR_EXPERIMENT = "mlops-doctor"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    required: bool = True


def run_checks(require_docker: bool = False) -> list[CheckResult]:
    """Run every check; later checks are skipped when the tracking server is down."""
    uri = settings().tracking_uri
    results = [_check("tracking server", lambda: _tracking(uri))]
    server_ok = results[0].ok
    for name, fn in (("model registry", _registry), ("artifact store", _artifacts)):
        results.append(_check(name, fn) if server_ok else CheckResult(name, False, "skipped: no tracking server"))
    results.append(_check("docker engine", _docker, required=require_docker))
    return results


def all_required_ok(results: list[CheckResult]) -> bool:
    return all(r.ok for r in results if r.required)


def _check(name: str, fn: Callable[[], str], required: bool = True) -> CheckResult:
    started = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:  # a check reports, it never raises
        detail, ok = one_line(exc, 200), False
    elapsed_ms = (time.perf_counter() - started) * 1000
    return CheckResult(name, ok, f"{detail} ({elapsed_ms:.0f} ms)", required)


def _tracking(uri: str) -> str:
    probe_tracking_server(uri)
    if not uri.startswith(("http://", "https://")):
        return f"{uri} (local store)"
    try:
        answer = http.get(uri.rstrip("/") + "/version", PROBE_TIMEOUT_S, max_bytes=64)
        version = answer.text().strip() if answer.ok else "unknown version"
    except http.Unreachable:
        version = "unknown version"
    return f"{uri} is up, MLflow {version}"


def _registry() -> str:
    with registry() as client:
        page = client.search_registered_models(max_results=1)
    return "search works" + (f", e.g. '{page[0].name}'" if page else ", no models yet")


def _artifacts() -> str:
    """Write a probe artifact through a throwaway run, read it back, delete the run."""
    payload = {"probe": uuid.uuid4().hex}
    with registry() as client:
        experiment = client.get_experiment_by_name(DOCTOR_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(DOCTOR_EXPERIMENT)
        run = client.create_run(experiment_id, run_name="artifact-probe")
        try:
            client.log_dict(run.info.run_id, payload, "probe.json")
            with tempfile.TemporaryDirectory() as tmp:
                path = client.download_artifacts(run.info.run_id, "probe.json", tmp)
                readback = json.loads(Path(path).read_text())
        finally:
            client.delete_run(run.info.run_id)
    if readback != payload:
        raise RuntimeError("probe artifact read back different content")
    return f"wrote and read a probe under {run.info.artifact_uri}"


def _docker() -> str:
    try:
        import docker
    except ImportError:
        raise RuntimeError("python package 'docker' not installed (pip install 'mlops-toolkit[docker]')") from None
    try:
        client = docker.from_env(timeout=3)
    except docker.errors.DockerException as exc:
        raise RuntimeError(f"no Docker engine answers ({_docker_host()}): {_root_cause(exc)}") from None
    try:
        version = client.version()
        info = client.info()
    finally:
        client.close()
    return f"Docker {version.get('Version', '?')} at {_docker_host()}; {swarm_role(info)}"


def swarm_role(info: dict) -> str:
    """Whether ``--runtime swarm`` can run on this engine: it needs a swarm manager."""
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        hint = " (live-restore is on: Docker refuses swarm mode with it)" if info.get("LiveRestoreEnabled") else ""
        return f"swarm: inactive, --runtime swarm needs `docker swarm init`{hint}"
    if not swarm.get("ControlAvailable"):
        return "swarm: worker node, --runtime swarm needs a manager"
    return f"swarm: manager of {swarm.get('Nodes', '?')} node(s), {swarm.get('Managers', '?')} manager(s)"


def _docker_host() -> str:
    import os

    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return one_line(exc, 200)
