"""Team projects end to end on real parts: the ``mlops`` CLI (in-process and as a subprocess),
Airflow's own DagBag, a policy file, the file audit trail and symlinked releases. No mocks,
and no MLflow server except for the one test that runs the scaffolded task."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlops_toolkit as mt
from mlops_toolkit import audit
from mlops_toolkit.cli import main
from mlops_toolkit.errors import NotFoundError, ValidationError
from mlops_toolkit.governance import PolicyRefusal
from mlops_toolkit.ops import projects
from tests.conftest import repo_root

# Importing Airflow reads AIRFLOW_HOME (and writes airflow.cfg there): a throwaway one unless
# the session already chose it (tests/dags/conftest.py does).
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))

POLICY = """\
users: {alice: [deployer], bob: [data-scientist]}
environments:
  prod:
    allow:
      project.deploy: [deployer]
"""
BROKEN_IMPORT = "from airflow.sdk import dag\nimport no_such_module_for_projects\n"
BROKEN_SYNTAX = "from airflow.sdk import dag\ndef broken(:\n"
FOREIGN_DAG = """\
import pendulum
from airflow.sdk import dag, task


@dag(dag_id="other_etl", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
def other_etl():
    task(lambda: 1, task_id="noop")()


other_etl()
"""


@dataclasses.dataclass
class Hub:
    """The module's one story: alice scaffolds ``demo`` and publishes it (outputs by step)."""

    tmp: Path
    project: Path
    root: Path
    audit_uri: str
    out: dict[str, str]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """new -> validate -> deploy dev -> deploy prod twice -> list -> rollback prod -> list."""
    tmp = tmp_path_factory.mktemp("projects")
    (tmp / "policy.yaml").write_text(POLICY)
    audit_uri = (tmp / "audit").as_uri()
    with pytest.MonkeyPatch.context() as mp:
        _policy_env(mp, tmp, audit_uri, user="alice")
        root, out = tmp / "airflow-dags", {}
        out["new"] = _invoke("project", "new", "demo", "--dir", str(tmp / "teams"))
        project = tmp / "teams" / "demo"
        out["validate"] = _invoke("project", "validate", str(project))
        deploy = ("project", "deploy", str(project), "--dags-root", str(root), "--env")
        out["dev"] = _invoke(*deploy, "dev")
        out["prod1"] = _invoke(*deploy, "prod")
        out["prod2"] = _invoke(*deploy, "prod")
        out["list"] = _invoke("project", "list", "--dags-root", str(root))
        out["rollback"] = _invoke("project", "rollback", "demo", "--env", "prod", "--dags-root", str(root))
        out["list_json"] = _invoke("project", "list", "--dags-root", str(root), "--json")
    yield Hub(tmp, project, root, audit_uri, out)


def _policy_env(mp: pytest.MonkeyPatch, tmp: Path, audit_uri: str, user: str) -> None:
    mp.setenv("MLOPS_USER", user)
    mp.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    mp.setenv("MLOPS_POLICY_FILE", str(tmp / "policy.yaml"))
    mp.setenv("MLOPS_AUDIT_URI", audit_uri)


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), prog_name="mlops")
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def _release(line: str, after: str = "-> ") -> str:
    return line.split(after, 1)[1].split(" ", 1)[0]


@pytest.fixture
def alice(hub: Hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Hub:
    """Acting as alice under the module's policy, with an audit trail of the test's own."""
    _policy_env(monkeypatch, hub.tmp, (tmp_path / "audit").as_uri(), user="alice")
    return hub


@pytest.fixture
def project_copy(hub: Hub, tmp_path: Path) -> Path:
    """A scaffolded project of its own, to break without touching the module's story."""
    copy = tmp_path / "demo"
    shutil.copytree(hub.project, copy)
    return copy


def _cli_env(**extra: str) -> dict[str, str]:
    """The worktree's code in the subprocess too, whatever PYTHONPATH pytest was started with."""
    paths = [str(repo_root()), str(repo_root() / "services" / "autoserve")]
    return {"PYTHONPATH": os.pathsep.join(paths), "MLFLOW_TRACKING_USERNAME": "", **extra}


# --- scaffold and validate ----------------------------------------------------------------

def test_new_scaffolds_a_manifest_a_dag_and_its_test(hub):
    assert hub.out["new"] == (f"created {hub.project}: project.json, dags/demo_train.py, tests/ "
                              f"(next: mlops project validate {hub.project})\n")
    assert json.loads((hub.project / "project.json").read_text()) == {
        "name": "demo", "owners": ["alice"], "team": "demo", "environments": ["dev", "stage", "prod"],
        "defaults": {"schedule": "@daily", "retries": 2}}
    assert sorted(str(p.relative_to(hub.project)) for p in hub.project.rglob("*.py")) == [
        "dags/demo_train.py", "tests/test_demo.py"]
    assert "mt.promote_best(" in (hub.project / "dags" / "demo_train.py").read_text()


def test_validate_names_the_project_and_its_dags(hub):
    assert hub.out["validate"] == "ok: demo (1 DAG: demo_train)\n"


def test_new_refuses_an_existing_folder(hub):
    before = (hub.project / "project.json").read_text()
    with pytest.raises(ValidationError, match="already exists: not overwriting it"):
        projects.new_project("demo", hub.project.parent)
    assert (hub.project / "project.json").read_text() == before


@pytest.mark.parametrize("name", ["Demo", "1demo", "_demo", "de mo", "de/mo", "../demo", "", "a" * 65, "démo"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(ValidationError, match="name must be lowercase letters"):
        projects.check_name(name)


@pytest.mark.parametrize("name", ["a", "team-a_2", "a" * 64])
def test_safe_names_pass(name):
    assert projects.check_name(name) == name


@pytest.mark.slow
def test_cli_refuses_an_unsafe_name_in_one_line(mlops_script, tmp_path):
    result = mlops_script("project", "new", "../escape", "--dir", str(tmp_path / "teams"), env=_cli_env())
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        ("Error: project name must be lowercase letters, digits, '_' or '-', start with a letter and have at most "
         "64 characters, got '../escape'")]
    assert result.stdout == "" and not (tmp_path / "teams").exists() and not (tmp_path / "escape").exists()


@pytest.mark.slow
def test_a_broken_dag_is_rejected_with_its_import_error(mlops_script, project_copy):
    (project_copy / "dags" / "broken_import.py").write_text(BROKEN_IMPORT)
    (project_copy / "dags" / "broken_syntax.py").write_text(BROKEN_SYNTAX)
    result = mlops_script("project", "validate", str(project_copy), env=_cli_env())
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # Airflow's own log lines and tracebacks stay out
    assert result.stderr.splitlines() == [
        ("Error: project demo is not valid: "
         "dags/broken_import.py: ModuleNotFoundError: No module named 'no_such_module_for_projects'; "
         "dags/broken_syntax.py: SyntaxError: invalid syntax")]


def test_a_dag_id_without_the_project_prefix_is_rejected(alice, project_copy):
    (project_copy / "dags" / "other.py").write_text(FOREIGN_DAG)
    with pytest.raises(projects.ProjectInvalid) as refused:
        projects.validate(project_copy)
    assert refused.value.problems == ["DAG id 'other_etl' (dags/other.py) does not start with demo_"]


def test_a_project_without_dags_is_rejected(alice, project_copy):
    (project_copy / "dags" / "demo_train.py").unlink()
    with pytest.raises(projects.ProjectInvalid, match="no DAG in dags/"):
        projects.validate(project_copy)


def test_manifest_problems_are_all_named():
    assert projects.manifest_problems({"name": "demo", "owners": "alice", "colour": "red"}) == [
        "team is required", "environments is required", "unknown key 'colour'", "owners must be a list"]
    assert projects.manifest_problems({"name": "Demo", "owners": [], "team": "t", "environments": ["qa"],
                                       "defaults": {"retries": -1, "schedule": 5}}) == [
        ("name must be lowercase letters, digits, '_' or '-', start with a letter and have at most 64 characters, "
         "got 'Demo'"),
        "owners must be a non-empty list of user names",
        "environments must be a non-empty list of dev, stage, prod",
        "defaults.schedule must be a string (cron or preset) or null",
        "defaults.retries must be an integer >= 0"]


def test_owners_must_be_users_of_the_policy(alice, project_copy):
    manifest = json.loads((project_copy / "project.json").read_text())
    (project_copy / "project.json").write_text(json.dumps({**manifest, "owners": ["alice", "mallory"]}))
    with pytest.raises(projects.ProjectInvalid) as refused:
        projects.validate(project_copy)
    assert refused.value.problems == [f"owner(s) mallory not in the policy's users ({alice.tmp / 'policy.yaml'})"]


# --- deploy, rollback, list ---------------------------------------------------------------

def test_deploy_switches_a_relative_symlink_and_keeps_the_previous_release(hub):
    first, second = _release(hub.out["prod1"]), _release(hub.out["prod2"])
    prod = hub.root / "prod"
    assert hub.out["dev"] == f"deployed demo to dev: {hub.root}/dev/demo -> {_release(hub.out['dev'])} (previous: none)\n"
    assert hub.out["prod1"] == f"deployed demo to prod: {prod}/demo -> {first} (previous: none)\n"
    assert hub.out["prod2"] == f"deployed demo to prod: {prod}/demo -> {second} (previous: {first})\n"
    assert first < second
    assert sorted(p.name for p in (prod / ".demo.releases").iterdir() if p.is_dir()) == [first, second]
    assert sorted(p.relative_to(prod / ".demo.releases" / second).as_posix()
                  for p in (prod / ".demo.releases" / second).rglob("*") if p.is_file()) == [
        "dags/demo_train.py", "project.json", "release.json"]
    assert "*.releases/" in (prod / ".airflowignore").read_text()


def test_rollback_points_back_at_the_previous_release(hub):
    first, second = _release(hub.out["prod1"]), _release(hub.out["prod2"])
    assert hub.out["rollback"] == f"rolled back demo in prod: {hub.root}/prod/demo -> {first} (was: {second})\n"
    assert os.readlink(hub.root / "prod" / "demo") == f".demo.releases/{first}"  # relative: the tree can move
    assert (hub.root / "prod" / ".demo.releases" / second / "release.json").is_file()  # kept, not deleted


def test_a_second_rollback_has_no_previous_release(alice):
    link = alice.root / "prod" / "demo"
    before = os.readlink(link)
    with pytest.raises(NotFoundError, match="demo in prod has no previous release to roll back to"):
        projects.rollback("demo", "prod", alice.root)
    assert os.readlink(link) == before


def test_the_published_prod_folder_loads_in_airflow(hub):
    """Airflow's dags folder = R/prod: the DAG is found once, through the link (the releases
    folder is ignored), and takes its schedule and retries from the published manifest."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(hub.root / "prod"))
    assert bag.import_errors == {}
    assert bag.dag_ids == ["demo_train"]
    dag = bag.dags["demo_train"]
    assert dag.fileloc == str(hub.root / "prod" / "demo" / "dags" / "demo_train.py")
    assert dag.schedule == "@daily"
    assert [(t.task_id, t.retries, t.owner) for t in dag.tasks] == [("train_and_promote", 2, "alice")]


def test_the_dag_takes_schedule_and_retries_from_the_published_manifest(alice, project_copy, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    manifest = json.loads((project_copy / "project.json").read_text())
    (project_copy / "project.json").write_text(json.dumps({**manifest, "defaults": {"schedule": "@hourly",
                                                                                    "retries": 0}}))
    projects.deploy(project_copy, "dev", tmp_path / "dags")
    bag = DagBag(dag_folder=str(tmp_path / "dags" / "dev"))
    assert bag.import_errors == {}
    dag = bag.dags["demo_train"]
    assert (dag.schedule, dag.tasks[0].retries) == ("@hourly", 0)


def test_list_shows_every_environment(hub):
    table = hub.out["list"].splitlines()
    assert table[0].split() == ["ENV", "NAME", "RELEASE", "DEPLOYED", "AT", "DAGS"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["dev", "demo", _release(hub.out["dev"])], ["prod", "demo", _release(hub.out["prod2"])]]
    assert all(line.split()[-1] == "demo_train" for line in table[1:])
    after = json.loads(hub.out["list_json"])
    assert [(p["env"], p["release"], p["previous"], p["deployed_by"], p["dags"]) for p in after] == [
        ("dev", _release(hub.out["dev"]), None, "alice", ["demo_train"]),
        ("prod", _release(hub.out["prod1"]), None, "alice", ["demo_train"])]


def test_list_of_an_empty_root(tmp_path):
    assert _invoke("project", "list", "--dags-root", str(tmp_path)) == f"no projects under {tmp_path}\n"


def test_every_deploy_and_rollback_is_in_the_audit_trail(hub):
    events = audit.list_events(uri=hub.audit_uri)
    assert [(e.action, e.environment, e.details["release"]) for e in events] == [
        ("project.deploy", "dev", _release(hub.out["dev"])),
        ("project.deploy", "prod", _release(hub.out["prod1"])),
        ("project.deploy", "prod", _release(hub.out["prod2"])),
        ("project.rollback", "prod", _release(hub.out["prod1"]))]
    last_deploy = events[2]
    assert (last_deploy.user, last_deploy.roles, last_deploy.outcome) == ("alice", ("deployer",), "done")
    assert last_deploy.details == {"project": "demo", "env": "prod", "release": _release(hub.out["prod2"]),
                                   "previous": _release(hub.out["prod1"])}
    assert last_deploy.reason == f"demo in prod: {_release(hub.out['prod1'])} -> {_release(hub.out['prod2'])}"


@pytest.mark.slow
def test_a_user_without_the_deployer_role_is_refused_and_nothing_is_published(mlops_script, hub, tmp_path):
    root = tmp_path / "airflow-dags"
    env = _cli_env(MLOPS_USER="bob", MLOPS_POLICY_FILE=str(hub.tmp / "policy.yaml"),
                   MLOPS_AUDIT_URI=(tmp_path / "audit").as_uri())
    result = mlops_script("project", "deploy", str(hub.project), "--env", "prod", "--dags-root", str(root), env=env)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [
        (f"Error: refused: bob (roles: data-scientist) may not project.deploy in prod; allowed roles: deployer "
         f"({hub.tmp / 'policy.yaml'})")]
    assert result.stdout == "" and not root.exists()
    [refusal] = audit.list_events(uri=(tmp_path / "audit").as_uri())
    assert (refusal.action, refusal.outcome, refusal.user, refusal.environment, refusal.details) == (
        "project.deploy", "refused", "bob", "prod", {"project": "demo", "env": "prod"})


def test_the_policy_lets_bob_deploy_to_dev_but_not_roll_back_prod(hub, tmp_path, monkeypatch):
    _policy_env(monkeypatch, hub.tmp, (tmp_path / "audit").as_uri(), user="bob")
    assert projects.deploy(hub.project, "dev", tmp_path / "dags").deployed_by == "bob"
    before = os.readlink(hub.root / "prod" / "demo")
    with pytest.raises(PolicyRefusal, match=r"^refused: bob \(roles: data-scientist\) may not project.deploy in prod"):
        projects.rollback("demo", "prod", hub.root)
    assert os.readlink(hub.root / "prod" / "demo") == before


def test_deploy_only_to_the_environments_of_the_manifest(alice, project_copy, tmp_path):
    manifest = json.loads((project_copy / "project.json").read_text())
    (project_copy / "project.json").write_text(json.dumps({**manifest, "environments": ["dev"]}))
    with pytest.raises(ValidationError, match=r"project demo does not deploy to prod \(its environments: dev\)"):
        projects.deploy(project_copy, "prod", tmp_path / "dags")
    assert not (tmp_path / "dags").exists()


def test_an_invalid_project_publishes_nothing(alice, project_copy, tmp_path):
    root = tmp_path / "dags"
    projects.deploy(project_copy, "dev", root)
    (project_copy / "dags" / "broken_import.py").write_text(BROKEN_IMPORT)
    with pytest.raises(projects.ProjectInvalid, match="dags/broken_import.py: ModuleNotFoundError"):
        projects.deploy(project_copy, "dev", root)
    assert [p.release for p in projects.list_publications(root)] == [
        p.name for p in (root / "dev" / ".demo.releases").iterdir() if p.is_dir()]  # the copy was removed


def test_old_releases_are_pruned_and_rollback_follows_what_was_live(alice, project_copy, tmp_path):
    root = tmp_path / "dags"
    live = [projects.deploy(project_copy, "dev", root).release for _ in range(7)]
    kept = sorted(p.name for p in (root / "dev" / ".demo.releases").iterdir() if p.is_dir())
    assert kept == live[-projects.KEEP_RELEASES:]
    assert projects.rollback("demo", "dev", root).release == live[-2]
    # A deploy after a rollback: rolling back again returns to what was live before it, not
    # to the release that was rolled back.
    newest = projects.deploy(project_copy, "dev", root)
    assert newest.replaced == live[-2]
    assert projects.rollback("demo", "dev", root).release == live[-2]


# --- the scaffold's own pieces ------------------------------------------------------------

@pytest.mark.slow
def test_the_scaffolded_test_passes(hub):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=hub.project, capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, **_cli_env()})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


@pytest.mark.slow
def test_the_scaffolded_task_trains_registers_and_promotes(hub, tracking_uri, unique_name):
    """The DAG's task body, run as Airflow would call it, against the session's MLflow server."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(hub.root / "prod" / "demo" / "dags"))
    model = unique_name("project-demo")
    train = bag.dags["demo_train"].get_task("train_and_promote").python_callable
    result = train(params={"model": model})
    assert result["version"] == 1 and result["decision"].startswith(f"{model}@Production promoted")
    assert mt.get_alias(model, "Production").version == 1
