"""Governance on the real registry: who may move which alias where, approvals and blocks,
the audit trail in a directory and in S3 (moto's S3 server standing in for MinIO), and the
acting user as MLflow's own auth app authenticates it."""

from __future__ import annotations

import json
import os
import urllib.request
from base64 import b64encode

import pytest

import mlops_toolkit as mt
from mlops_toolkit import approvals, audit, governance
from mlops_toolkit.errors import ValidationError

POLICY = """
users: {alice: [data-scientist], bob: [approver, deployer]}
environments:
  prod:
    require_approval: [Production]
    allow:
      alias.set: [approver]
      alias.delete: [approver]
      alias.rollback: [approver]
      approve: [approver]
      block: [approver]
      unblock: [approver]
      rollout.start: [approver]
      rollout.abort: [approver]
      shadow.set: [approver]
      shadow.clear: [approver]
"""


@pytest.fixture
def governed(tmp_path, monkeypatch, make_model):
    """A model with Production on v1 and challenger on v2 (set in dev), then prod rules."""
    model = make_model(versions=3)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "challenger", 2)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    trail = tmp_path / "audit"
    monkeypatch.setenv("MLOPS_POLICY_FILE", str(policy))
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "prod")
    monkeypatch.setenv("MLOPS_AUDIT_URI", trail.as_uri())
    return model


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_policy_with_a_typo_is_an_error_not_allow_all():
    for text, message in [
        ({"users": {}, "environment": {}}, "unknown key(s) environment"),
        ({"environments": {"production": {}}}, "unknown environment 'production'"),
        ({"environments": {"prod": {"allow": {"alias.move": ["approver"]}}}}, "unknown action 'alias.move'"),
        ({"environments": {"prod": {"allow": {"alias.set": "approver"}}}}, "must be a list of roles"),
        ({"users": {"bob": "approver"}}, "users.bob must be a list of role names"),
    ]:
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            governance.parse_policy(text)


def test_in_prod_every_governed_action_of_a_user_without_the_role_is_refused_and_nothing_moves(
        governed, mlops_script, mlflow_client):
    model = governed
    before = (mlflow_client.get_registered_model(model).aliases, len(mt.alias_history(model, "Production")))
    for argv, action in [
        (["alias", "set", "Production", "-m", model, "-v", "2"], "alias.set"),
        (["alias", "delete", "challenger", "-m", model], "alias.delete"),
        (["alias", "rollback", "Production", "-m", model], "alias.rollback"),
        (["approve", model, "--version", "2"], "approve"),
        (["block", model, "--version", "2", "--reason", "bad"], "block"),
        (["rollout", "start", model, "--to", "challenger"], "rollout.start"),
        (["shadow", "set", model, "--alias", "challenger"], "shadow.set"),
    ]:
        result = mlops_script(*argv, env={"MLOPS_USER": "alice"})
        assert result.returncode == 3, (argv, result.stderr)
        line = _one_line(result)
        assert line.startswith(f"Error: refused: alice (roles: data-scientist) may not {action} in prod; "
                               "allowed roles: approver"), line
    after = (mlflow_client.get_registered_model(model).aliases, len(mt.alias_history(model, "Production")))
    assert after == before
    assert "mlops.approval_state" not in {**mlflow_client.get_model_version(model, "2").tags} or \
        mlflow_client.get_model_version(model, "2").tags["mlops.approval_state"] != "approved"
    refused = audit.list_events(model=model)
    assert [e.action for e in refused] == ["alias.set", "alias.delete", "alias.rollback", "approve", "block",
                                           "rollout.start", "shadow.set"]
    assert {(e.user, e.outcome, e.environment) for e in refused} == {("alice", "refused", "prod")}


def test_production_in_prod_takes_approved_versions_only_and_the_trail_says_who(governed, mlops_script,
                                                                                 monkeypatch):
    model = governed
    bob = {"MLOPS_USER": "bob"}
    unapproved = mlops_script("alias", "set", "Production", "-m", model, "-v", "2", env=bob)
    assert unapproved.returncode == 3
    assert "takes approved versions only and v2 is pending; `mlops approve" in _one_line(unapproved)
    approved = mlops_script("approve", model, "--version", "2", "--reason", "reviewed the eval report", env=bob)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"{model} v2: approved by bob"
    moved = mlops_script("alias", "set", "Production", "-m", model, "-v", "2", "--reason", "approved", env=bob)
    assert moved.returncode == 0, moved.stderr
    assert mt.get_alias(model, "Production").version == 2
    assert mt.alias_history(model, "Production")[-1].user == "bob"
    # an alias the policy does not list takes any version, but from an approver only
    monkeypatch.setenv("MLOPS_USER", "bob")
    assert mt.set_alias(model, "challenger", 3).to_version == 3

    listed = mlops_script("audit", "list", "--model", model)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[1], r[3], r[4]) for r in rows] == [
        ("bob", "alias.set", "refused"), ("bob", "approve", "done"), ("bob", "alias.set", "allowed"),
        ("bob", "alias.set", "allowed")]
    assert rows[2][5:8] == [model, "Production", "v1"] and rows[2][9] == "v2"
    as_json = json.loads(mlops_script("audit", "list", "--model", model, "--action", "approve", "--json").stdout)
    assert [(e["action"], e["version"], e["reason"]) for e in as_json] == [("approve", 2, "reviewed the eval report")]


def test_a_blocked_version_takes_no_alias_anywhere_and_cannot_win_the_gate(make_model, mlops_script, monkeypatch):
    from mlops_toolkit.promotion import promote_best

    model = make_model(versions=3, metrics=[{"f1": 0.8}, {"f1": 0.85}, {"f1": 0.99}])
    mt.set_alias(model, "Production", 1)
    blocked = approvals.block(model, 3, "trained on leaked labels")
    assert str(blocked) == f"{model} v3: blocked: trained on leaked labels"
    refused = mlops_script("alias", "set", "challenger", "-m", model, "-v", "3")
    assert refused.returncode == 3 and "is blocked (trained on leaked labels)" in _one_line(refused)
    decision = promote_best(model, "f1", min_delta=0.01)
    assert decision.promoted and decision.candidate_version == 2  # v3 scores best but does not compete
    approvals.unblock(model, 3)
    assert mt.set_alias(model, "challenger", 3).to_version == 3


def test_a_winner_that_is_not_approved_leaves_production_in_prod(make_model, tmp_path, monkeypatch):
    from mlops_toolkit.promotion import promote_best

    model = make_model(versions=2, metrics=[{"f1": 0.8}, {"f1": 0.9}])
    mt.set_alias(model, "Production", 1)
    (tmp_path / "p.yaml").write_text(POLICY)
    monkeypatch.setenv("MLOPS_POLICY_FILE", str(tmp_path / "p.yaml"))
    monkeypatch.setenv("MLOPS_ENVIRONMENT", "prod")
    monkeypatch.setenv("MLOPS_USER", "bob")
    decision = promote_best(model, "f1")
    assert not decision.promoted and "takes approved versions only and v2 is pending" in decision.reason
    approvals.approve(model, 2)
    assert promote_best(model, "f1").promoted


def test_the_trail_in_s3_is_listed_in_order_and_prod_refuses_a_move_it_cannot_record(
        make_model, s3_server, monkeypatch, mlops_script):
    import boto3

    credentials = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="governance")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLOPS_AUDIT_URI", "s3://governance/audit/team-a")
    model = make_model(versions=3)
    for version in (1, 2, 3, 1):
        mt.set_alias(model, "Production", version)
    events = audit.list_events(model=model)
    assert [(e.from_version, e.to_version) for e in events] == [(None, 1), (1, 2), (2, 3), (3, 1)]
    assert all(e.key.endswith(".json") and e.host for e in events) and events == sorted(events, key=lambda e: e.key)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_server).list_objects_v2(
        Bucket="governance", Prefix="audit/team-a/")["Contents"]]
    assert len(keys) == 4 and all(k.startswith("audit/team-a/20") for k in keys)

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the object store is away
    prod = mlops_script("alias", "set", "Production", "-m", model, "-v", "2", env={"MLOPS_ENVIRONMENT": "prod"})
    assert prod.returncode == 1 and "audit event alias.set could not be written" in _one_line(prod)
    assert mt.get_alias(model, "Production").version == 1  # nothing moved without its record
    dev = mlops_script("alias", "set", "Production", "-m", model, "-v", "2")
    assert dev.returncode == 0 and mt.get_alias(model, "Production").version == 2
    assert "audit event alias.set could not be written" in dev.stderr  # a warning in dev


def test_the_acting_user_is_the_one_mlflow_authenticates(tmp_path, iris_data, monkeypatch):
    """`mlflow server --app-name basic-auth`: the toolkit passes MLFLOW_TRACKING_USERNAME and
    PASSWORD on every request, so the user the policy sees is the one the server checked."""
    import subprocess
    import sys

    from mlops_toolkit.ops.local_server import LocalMlflowServer

    admin_password = "admin-pass-for-tests"
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "tests-only-secret")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", admin_password)
    (tmp_path / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = EDIT\n"
        f"database_uri = sqlite:///{tmp_path / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / "auth.ini"))
    server = LocalMlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts",
                               extra_args=["--app-name", "basic-auth"]).start()
    try:
        admin = "Basic " + b64encode(f"admin:{admin_password}".encode()).decode()
        for user in ("carol", "dave"):  # two users of the server: carol an approver in the policy, dave nobody
            request = urllib.request.Request(
                f"{server.uri}/api/2.0/mlflow/users/create", method="POST",
                data=json.dumps({"username": user, "password": f"{user}-pass-1234"}).encode(),
                headers={"Authorization": admin, "Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).read()
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY.replace("bob:", "carol:"))
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_TRACKING_USERNAME": "carol",
               "MLFLOW_TRACKING_PASSWORD": "carol-pass-1234", "MLOPS_POLICY_FILE": str(policy),
               "MLOPS_ENVIRONMENT": "prod", "MLOPS_USER": "alice"}  # the authenticated user wins over MLOPS_USER
        mlops = [sys.executable, "-m", "mlops_toolkit.cli"]
        whoami = subprocess.run([*mlops, "whoami"], env=env, capture_output=True, text=True, timeout=60)
        assert whoami.stdout.startswith("carol (roles: approver, deployer) in prod"), whoami.stdout + whoami.stderr
        script = ("import mlops_toolkit as mt; from sklearn.linear_model import LogisticRegression as L; "
                  "import sys; from sklearn.datasets import load_iris; X, y = load_iris(return_X_y=True, as_frame=True); "
                  "mt.configure(experiment='auth'); run = mt.start_run('m').__enter__(); "
                  "print(run.log_model(L(max_iter=200).fit(X, y), register_as='authmodel', input_example=X[:2]))")
        logged = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert logged.returncode == 0, logged.stderr[-2000:]
        version = logged.stdout.strip().splitlines()[-1]
        for argv in (["approve", "authmodel", "--version", version],
                     ["alias", "set", "Production", "-m", "authmodel", "-v", version]):
            done = subprocess.run([*mlops, *argv], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        history = subprocess.run([*mlops, "alias", "history", "Production", "-m", "authmodel"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert history.stdout.splitlines()[-1].split()[4] == "carol", history.stdout
        dave = {**env, "MLFLOW_TRACKING_USERNAME": "dave", "MLFLOW_TRACKING_PASSWORD": "dave-pass-1234"}
        refused = subprocess.run([*mlops, "alias", "delete", "Production", "-m", "authmodel"], env=dave,
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 3 and "refused: dave (roles: none) may not alias.delete in prod" in refused.stderr
        wrong = subprocess.run([*mlops, "alias", "delete", "Production", "-m", "authmodel"], capture_output=True,
                               text=True, timeout=60, env={**env, "MLFLOW_TRACKING_PASSWORD": "wrong"})
        assert wrong.returncode != 0 and "Traceback" not in wrong.stderr, wrong.stderr
        owner = subprocess.run([sys.executable, "-c", "from mlflow import MlflowClient; "
                                f"c = MlflowClient('{server.uri}', registry_uri='{server.uri}'); "
                                f"print(c.get_model_version('authmodel', '{version}').tags)"],
                               env=env, capture_output=True, text=True, timeout=60)
        assert "'mlops.owner': 'carol'" in owner.stdout and "'mlops.approval_state': 'approved'" in owner.stdout
    finally:
        server.stop()
