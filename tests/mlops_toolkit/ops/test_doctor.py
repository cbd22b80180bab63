"""mlops doctor checks, against the real server and whatever Docker this machine has."""

from __future__ import annotations

import os

from mlops_toolkit import configure
from mlops_toolkit.ops.doctor import all_required_ok, run_checks
from mlops_toolkit.ops.processes import free_port


def _docker_socket_present() -> bool:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return not host.startswith("unix://") or os.path.exists(host.removeprefix("unix://"))


def test_all_required_checks_pass_against_a_real_server(tracking_uri):
    results = {r.name: r for r in run_checks()}
    assert all_required_ok(list(results.values()))
    assert results["tracking server"].ok and "MLflow 3.17.2" in results["tracking server"].detail
    assert results["artifact store"].ok and "wrote and read a probe" in results["artifact store"].detail
    assert not results["docker engine"].required
    # The Docker check reports what this machine really has.
    if not _docker_socket_present():
        assert not results["docker engine"].ok


def test_require_docker_makes_it_required(tracking_uri):
    results = run_checks(require_docker=True)
    docker = next(r for r in results if r.name == "docker engine")
    assert docker.required
    assert all_required_ok(results) == docker.ok


def test_dead_server_fails_and_skips_dependent_checks():
    configure(tracking_uri=f"http://127.0.0.1:{free_port()}")
    results = {r.name: r for r in run_checks()}
    assert not results["tracking server"].ok
    assert results["model registry"].detail.startswith("skipped")
    assert not all_required_ok(list(results.values()))


def test_swarm_role_says_whether_the_swarm_runtime_can_run_here():
    from mlops_toolkit.ops.doctor import swarm_role

    assert swarm_role({"Swarm": {"LocalNodeState": "inactive"}, "LiveRestoreEnabled": True}) == (
        "swarm: inactive, --runtime swarm needs `docker swarm init` (live-restore is on: Docker refuses swarm mode "
        "with it)")
    assert swarm_role({"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}}).startswith("swarm: worker")
    assert swarm_role({"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "Nodes": 3, "Managers": 1}}) == (
        "swarm: manager of 3 node(s), 1 manager(s)")
