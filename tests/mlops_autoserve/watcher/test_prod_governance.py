"""Autoserve in prod on real processes: an alias moved to an unapproved version keeps
serving the approved one, says why, and moves once the version is approved."""

from __future__ import annotations

import re

import pytest

import mlops_toolkit as mt
from mlops_toolkit import approvals
from tests.harness import Watcher, wait_for

pytestmark = pytest.mark.slow
DEPLOY_TIMEOUT = 120


def test_an_unapproved_version_never_serves_in_prod_and_the_old_one_keeps_serving(
        tracking_uri, served_model, tmp_path, mlops_script):
    model, (v1, v2, _) = served_model.name, served_model.good
    assert approvals.version_governance(model, v2).approval_state == "pending"  # as the toolkit logged it
    approvals.approve(model, v1)
    mt.set_alias(model, "Production", v1)
    watcher = Watcher(tracking_uri, tmp_path / "state", [model], "--aliases", "Production",
                      "--environment", "prod").start()
    try:
        wait_for(lambda: watcher.endpoint_ready("Production", v1), DEPLOY_TIMEOUT, what="Production on v1")
        mt.set_alias(model, "Production", v2)
        endpoint = wait_for(lambda: (e := watcher.endpoints()["Production"])["state"] == "blocked" and e, 30,
                            what="Production held")
        assert (endpoint["version"], endpoint["desired_version"]) == (v1, v2)
        assert "is not approved for prod" in endpoint["last_error"]
        statuses = {watcher.invoke(model, "Production")[1].get("X-Model-Version") for _ in range(20)}
        assert statuses == {str(v1)}
        status = mlops_script("serve", "status", "--gateway-admin", watcher.admin_url)
        assert re.search(rf"Production\s+v{v1}\s+blocked \(-> v{v2}\)", status.stdout), status.stdout
        assert watcher.metric("autoserve_route_blocked", alias="Production", version=str(v2)) == 1

        approvals.approve(model, v2)
        wait_for(lambda: watcher.endpoint_ready("Production", v2), DEPLOY_TIMEOUT, what="Production on v2")
    finally:
        watcher.stop()
