"""Autoserve in prod on real processes: an alias moved to an unapproved version keeps
serving the approved one, says why, and moves once the version is approved; blocking the
version that serves takes it out of serving (back to the last good one, or 503)."""

from __future__ import annotations

import re
import time

import pytest

import mlops_toolkit as mt
from mlops_toolkit import approvals
from tests.harness import LoadClient, Watcher, wait_for

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

        # The kill switch: blocking the version that serves takes it out, blue/green, back to
        # the newest approved, unblocked version in the alias's history (v1), under load.
        path = f"/serve/{model.replace(' ', '%20')}/Production/invocations"
        with LoadClient(watcher.port, path) as load:
            wait_for(lambda: load.sent > 20, 10, what="load running")
            blocked_at = time.monotonic()
            approvals.block(model, v2, reason="leaked split")
            wait_for(lambda: load.first_answer(v1, blocked_at), DEPLOY_TIMEOUT, what="v1 answering again")
            wait_for(lambda: load.versions.get(str(v1), 0) > 20, 30, what="v1 answering")
            last_v2 = max(t for t, code, v in load.events if v == str(v2))
        assert load.failed == 0, load.codes
        assert not any(v == str(v2) for t, _, v in load.events if t > last_v2)  # v2 never answers again
        endpoint = watcher.endpoints()["Production"]
        assert (endpoint["version"], endpoint["desired_version"], endpoint["state"]) == (v1, v2, "blocked")
        assert "is blocked in prod" in endpoint["last_error"]
        status = mlops_script("serve", "status", "--gateway-admin", watcher.admin_url)
        assert re.search(rf"Production\s+v{v1}\s+blocked \(-> v{v2}\)", status.stdout), status.stdout

        # Nothing left that may serve: 503 with the reason, in JSON.
        approvals.block(model, v1, reason="also leaked")
        code, _, body = wait_for(lambda: (r := watcher.invoke(model, "Production"))[0] == 503 and r, 30,
                                 what="503 once no version may serve")
        assert "no approved, unblocked version" in body["reason"], body
    finally:
        watcher.stop()
        for version in (v1, v2):
            approvals.unblock(model, version)
