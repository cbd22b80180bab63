"""``mlops bootstrap`` against real parts: a real Airflow 3 (api-server, scheduler with the
LocalExecutor, dag-processor) on a fresh PostgreSQL database running the real DAGs, the
session's MLflow server, and a real autoserve watcher as the gateway. Nothing is mocked.

The Airflow processes are started once per module (about 20 s) and every one of them, with
the task processes they fork, is stopped at teardown.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import inspect
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlops_toolkit.ops.processes import free_port, pid_running
from tests.conftest import _postgres_database, need, repo_root
from tests.harness import Watcher, http_json, wait_for

PASSWORD = "bootstrap-" + secrets.token_hex(8)  # known to the test, never printed by the CLI
DAGS_FOLDER = repo_root() / "dags"


# -- the real Airflow --------------------------------------------------------------------------
@dataclass
class AirflowStack:
    url: str
    home: Path
    model: str
    experiments: tuple[str, str]  # (training, monitoring): unique, so reset touches nothing else
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def token(self) -> str:
        status, _, body = http_json("POST", f"{self.url}/auth/token", {"username": "admin", "password": PASSWORD})
        assert status == 201, (status, body)
        return body["access_token"]

    def api(self, method: str, path: str, body=None):
        return http_json(method, f"{self.url}/api/v2{path}", body, headers={"Authorization": f"Bearer {self.token()}"})

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in self.processes:
            path = self.home / f"{name}.log"
            tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- {name} ---\n" + "\n".join(tail))
        return "\n".join(out)


def _airflow_env(home: Path, sql_conn: str, port: int, app_db_url: str, tracking_uri: str, model: str,
                 experiment: str) -> dict[str, str]:
    """What docker-compose.yml gives the Airflow services, pointed at loopback."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}  # e.g. tests/dags' own home
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    jwt_secret = secrets.token_urlsafe(64)  # >= 64 bytes
    from cryptography.fernet import Fernet
    return {
        **base,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_conn,
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
        "AIRFLOW__API__SECRET_KEY": jwt_secret,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "False",
        # what the DAGs' tasks read
        "APP_DB_URL": app_db_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLOPS_MODEL_NAME": model,
        "MLOPS_EXPERIMENT": experiment,
    }


def _stop_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


def _processes_with_env(marker: str) -> list[int]:
    """Our processes whose environment holds ``marker`` (catches task processes in other groups)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes().split(b"\0") and pid_running(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, tracking_uri, app_db_url) -> Iterator[AirflowStack]:
    need(importlib.util.find_spec("airflow") is not None, "apache-airflow is not installed (pip install '.[airflow]')")
    db_url, drop = _postgres_database()
    need(db_url is not None, "Airflow's LocalExecutor needs PostgreSQL at 127.0.0.1:5432")
    home = tmp_path_factory.mktemp("airflow-home")
    port = free_port()
    uid = uuid.uuid4().hex[:6]
    stack = AirflowStack(
        url=f"http://127.0.0.1:{port}", home=home, model=f"bootstrap-iris-{uid}",
        experiments=(f"bootstrap-train-{uid}", f"bootstrap-monitor-{uid}"), env={},
    )
    stack.env = _airflow_env(home, db_url.replace("postgresql+psycopg://", "postgresql+psycopg2://"), port, app_db_url,
                             tracking_uri, stack.model, stack.experiments[0])
    airflow = str(Path(sys.executable).parent / "airflow")
    started = time.monotonic()
    try:
        migrate = subprocess.run([airflow, "db", "migrate"], env=stack.env, capture_output=True, text=True, timeout=180)
        assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]
        commands = {
            "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            "scheduler": ["scheduler", "--skip-serve-logs"],  # the log server would bind 0.0.0.0
            "dag-processor": ["dag-processor"],
        }
        for name, args in commands.items():
            with open(home / f"{name}.log", "ab") as log:
                stack.processes[name] = subprocess.Popen([airflow, *args], env=stack.env, stdout=log,
                                                         stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            for name, process in stack.processes.items():
                assert process.poll() is None, f"airflow {name} exited\n{stack.logs()}"
            if not _port_open(port):
                return False
            status, _, body = http_json("GET", f"{stack.url}/api/v2/monitor/health")
            return status == 200 and all((body.get(c) or {}).get("status") == "healthy"
                                         for c in ("metadatabase", "scheduler", "dag_processor"))

        wait_for(healthy, 120, interval=0.5, what=f"Airflow health at {stack.url}")
        print(f"\nairflow api-server + scheduler + dag-processor healthy in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        for process in reversed(list(stack.processes.values())):
            _stop_group(process)
        for pid in _processes_with_env(f"AIRFLOW_HOME={home}"):  # task processes that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        drop()


def _port_open(port: int) -> bool:
    from mlops_toolkit.ops.processes import port_is_open

    return port_is_open("127.0.0.1", port)


@pytest.fixture(scope="module")
def gateway(airflow_stack, tracking_uri, tmp_path_factory) -> Iterator[Watcher]:
    """A real autoserve watcher serving the stack's model (Production only: one deployment)."""
    state = tmp_path_factory.mktemp("bootstrap-autoserve") / "state"
    watcher = Watcher(tracking_uri, state, [airflow_stack.model], "--aliases", "Production", poll_interval=1.0)
    watcher.start()
    yield watcher
    watcher.stop()


def _bootstrap(mlops_script, stack: AirflowStack, gateway: Watcher | None, *args: str, timeout: float = 240,
               password: str = PASSWORD, **env: str) -> subprocess.CompletedProcess:
    urls = (gateway.url, gateway.admin_url) if gateway else ("http://127.0.0.1:9", "http://127.0.0.1:9")
    return mlops_script(
        "bootstrap", "--airflow-url", stack.url, "--gateway", urls[0], "--gateway-admin", urls[1], "--model", stack.model,
        "--reset-experiments", ",".join(stack.experiments), "--timeout", str(timeout), *args,
        env={"AIRFLOW_PASSWORD": password, **env}, timeout=timeout + 60,
    )


def _assert_clean_output(result: subprocess.CompletedProcess) -> None:
    text = result.stdout + result.stderr
    assert PASSWORD not in text
    assert "eyJ" not in text  # a JWT's first bytes: the token is never printed
    assert "Traceback" not in text


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


# -- end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_bootstrap_runs_the_dags_through_airflow_and_predicts_from_production(airflow_stack, gateway, mlops_script,
                                                                              mlflow_client):
    started = time.monotonic()
    result = _bootstrap(mlops_script, airflow_stack, gateway)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + airflow_stack.logs()
    _assert_clean_output(result)
    out = result.stdout
    print(f"\nfirst bootstrap: {seconds:.1f} s\n{out}")

    # both runs succeeded, as Airflow itself reports them; unpausing made the scheduler start
    # each DAG's due run, which the job followed: ONE run per DAG (triggering one as well
    # would load and train twice)
    run_ids = dict(re.findall(r"(dag_data_load|dag_training): run (\S+) succeeded", out))
    assert set(run_ids) == {"dag_data_load", "dag_training"}, out
    for dag_id, run_id in run_ids.items():
        status, _, run = airflow_stack.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
        assert status == 200 and run["state"] == "success" and run["run_type"] == "scheduled", run
        status, _, dag = airflow_stack.api("GET", f"/dags/{dag_id}")
        assert dag["is_paused"] is False
        status, _, runs = airflow_stack.api("GET", f"/dags/{dag_id}/dagRuns")
        assert [r["dag_run_id"] for r in runs["dag_runs"]] == [run_id], runs
    assert "following the run the scheduler started for its due time" in out

    # the prediction came through the gateway from a version that holds (or held) Production
    match = re.search(rf"prediction from {re.escape(airflow_stack.model)}@Production \(v(\d+)\): \[(\d), (\d)\]", out)
    assert match, out
    served = int(match.group(1))
    production = int(mlflow_client.get_model_version_by_alias(airflow_stack.model, "Production").version)
    import mlops_toolkit as mt

    history = {e.to_version for e in mt.alias_history(airflow_stack.model, "Production")}
    assert served == production or served in history, (served, production, history)
    assert f"(X-Model-Version: {served})" in out and "Bootstrap done in" in out
    # the DAG's training run logged into the experiment reset will delete
    assert mlflow_client.get_experiment_by_name(airflow_stack.experiments[0]).lifecycle_stage == "active"


@pytest.mark.slow
def test_bootstrap_reset_starts_the_model_and_experiments_afresh(airflow_stack, gateway, mlops_script, mlflow_client):
    """Run after the first test: the model and the training experiment exist, and the
    training DAG must be able to create the experiment again under the same name."""
    train_experiment = airflow_stack.experiments[0]
    before = mlflow_client.get_experiment_by_name(train_experiment)
    reset_started = int(time.time() * 1000)
    started = time.monotonic()
    result = _bootstrap(mlops_script, airflow_stack, gateway, "--reset")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr + "\n" + airflow_stack.logs()
    _assert_clean_output(result)
    print(f"\nsecond bootstrap (--reset): {seconds:.1f} s\n{result.stdout}")
    after = mlflow_client.get_experiment_by_name(train_experiment)
    assert after is not None and after.lifecycle_stage == "active"
    if before is not None:  # the old one was renamed and soft-deleted, its runs kept
        assert after.experiment_id != before.experiment_id
        old = mlflow_client.get_experiment(before.experiment_id)
        assert old.lifecycle_stage == "deleted" and old.name.startswith(f"{train_experiment} (reset ")
        assert "reset: deleted registered model" in result.stdout
    # every version now comes from after the reset: the old model is gone, numbering restarted
    versions = mlflow_client.search_model_versions(f"name = '{airflow_stack.model}'")
    assert versions and all(v.creation_timestamp >= reset_started for v in versions)
    assert min(int(v.version) for v in versions) == 1
    served = int(re.search(r"@Production \(v(\d+)\)", result.stdout).group(1))
    assert served in {int(v.version) for v in versions}
    # the DAGs are unpaused now with nothing due: the job triggered one run of each
    for dag_id in ("dag_data_load", "dag_training"):
        status, _, runs = airflow_stack.api("GET", f"/dags/{dag_id}/dagRuns?order_by=-run_after")
        assert [r["run_type"] for r in runs["dag_runs"]] == ["manual", "scheduled"], runs


# -- errors a user meets -----------------------------------------------------------------------
@pytest.mark.slow
def test_wrong_airflow_password_is_one_line_naming_the_url_and_401(airflow_stack, mlops_script, tracking_uri):
    started = time.monotonic()
    result = _bootstrap(mlops_script, airflow_stack, None, password="not-the-password",
                        timeout=60)
    assert result.returncode == 1
    line = _one_error_line(result)
    assert airflow_stack.url in line and "401" in line and "credentials" in line, line
    assert "not-the-password" not in result.stdout + result.stderr
    _assert_clean_output(result)
    assert time.monotonic() - started < 30  # no waiting for the (absent) gateway first


@pytest.mark.slow
def test_a_failed_run_names_the_dag_and_run_and_a_stuck_one_times_out(airflow_stack):
    """Real runs of a DAG left paused: one stays queued (timeout), one is marked failed."""
    from mlops_toolkit.ops.airflow_api import AirflowClient, AirflowError

    client = AirflowClient(airflow_stack.url, "admin", PASSWORD)
    wait_for(lambda: client.dag("dag_model_monitoring"), 60, interval=1, what="dag_model_monitoring parsed")
    stuck = client.trigger("dag_model_monitoring", logical_date=None)  # paused: never starts
    assert stuck.state == "queued"
    expected = rf"DAG dag_model_monitoring run {re.escape(stuck.run_id)} still queued after 2 s"
    with pytest.raises(AirflowError, match=expected):
        client.wait_for_run(stuck, timeout=2, on_progress=lambda line: None, interval=0.5)

    failed = client.trigger("dag_model_monitoring", logical_date=dt.datetime.now(dt.timezone.utc))
    run_path = f"/dags/dag_model_monitoring/dagRuns/{urllib.parse.quote(failed.run_id, safe='')}"
    status, _, body = airflow_stack.api("PATCH", run_path, {"state": "failed"})
    assert status == 200, body
    lines: list[str] = []
    with pytest.raises(AirflowError) as caught:
        client.wait_for_run(failed, timeout=30, on_progress=lines.append, interval=0.5)
    message = str(caught.value)
    assert message.startswith(f"DAG dag_model_monitoring run {failed.run_id} ended failed") and "\n" not in message
    assert lines and lines[-1].startswith(f"dag_model_monitoring {failed.run_id}: failed")


def test_unreachable_airflow_fails_within_the_timeout_naming_the_url(mlops_script, tracking_uri):
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    started = time.monotonic()
    result = mlops_script("bootstrap", "--airflow-url", url, "--timeout", "4", env={"AIRFLOW_PASSWORD": PASSWORD},
                          timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    line = _one_error_line(result)
    assert f"Airflow API server at {url} not ready" in line and "timeout 4 s" in line, line
    assert "waiting for Airflow API server at" in result.stdout
    _assert_clean_output(result)
    assert elapsed < 4 + 8, elapsed  # the job's timeout plus the CLI's start-up


def test_missing_password_is_a_usage_error(mlops_script):
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_PASSWORD"}
    script = Path(sys.executable).parent / "mlops"
    result = subprocess.run([str(script), "bootstrap"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "Missing option '--airflow-password'" in result.stderr and "Traceback" not in result.stderr


def test_bad_options_exit_2(mlops_script):
    for args in (["--timeout", "0"], ["--dags", " , "], ["--reset", "--no-such-option"],
                 ["--airflow-url", "airflow:8080"], ["--gateway", "ftp://x"]):
        result = mlops_script("bootstrap", *args, env={"AIRFLOW_PASSWORD": PASSWORD}, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert PASSWORD not in result.stdout + result.stderr


# -- reset against MLflow only -----------------------------------------------------------------
def test_reset_frees_experiment_names_even_when_already_soft_deleted(tracking_uri, mlflow_client, unique_name,
                                                                     make_model):
    import mlflow

    from mlops_toolkit.ops.bootstrap import reset_mlflow

    model = make_model(versions=2)
    live, deleted, absent = unique_name("reset-live"), unique_name("reset-deleted"), unique_name("reset-absent")
    live_id = mlflow_client.create_experiment(live)
    deleted_id = mlflow_client.create_experiment(deleted)
    mlflow_client.delete_experiment(deleted_id)  # the pitfall: the name stays taken
    with pytest.raises(Exception, match="deleted"):
        mlflow.set_experiment(deleted)

    lines: list[str] = []
    result = reset_mlflow(tracking_uri, model, (live, deleted, absent), lines.append)

    assert result.model_deleted and result.experiments[absent] == "absent"
    assert mlflow_client.search_registered_models(f"name = '{model}'") == []
    for name, old_id in ((live, live_id), (deleted, deleted_id)):
        old = mlflow_client.get_experiment(old_id)
        assert old.lifecycle_stage == "deleted" and old.name != name  # runs kept, name freed
        assert mlflow.set_experiment(name).experiment_id != old_id  # what the training DAG does next
    again = reset_mlflow(tracking_uri, model, (absent,), lines.append)  # nothing left: still fine
    assert not again.model_deleted and any("no registered model" in line for line in lines)


def test_reset_defaults_name_the_experiments_the_dags_log_to():
    from mlops_toolkit.batch import drift
    from mlops_toolkit.ops.bootstrap import RESET_EXPERIMENTS

    training_dag = (DAGS_FOLDER / "dag_training.py").read_text()
    assert re.search(r'os\.environ\.get\("MLOPS_EXPERIMENT", "([^"]+)"\)', training_dag).group(1) in RESET_EXPERIMENTS
    assert inspect.signature(drift.log_to_mlflow).parameters["experiment"].default in RESET_EXPERIMENTS
