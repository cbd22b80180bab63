"""docker-compose.yml, checked by the real docker-compose (Debian's 1.29.2) with env.dev.example.

The stack pulls public images (postgres, minio, prometheus, grafana, loki...) that this
machine cannot reach, so it is validated rather than started here; the project's own
images are built and run for real in test_images.py, the monitoring files in
tests/monitoring, and the init job's script below against the real PostgreSQL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest
import yaml

from tests.conftest import PG_DSN, need, repo_root
from tests.stack.conftest import compose_env

ROOT = repo_root()
STACK = {
    "preflight", "postgres", "postgres-init", "minio", "minio-init", "mlflow", "airflow-init", "airflow-apiserver",
    "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "mlflow-autoserve", "autoserve-gateway", "serving-image",
    "prometheus", "pushgateway", "blackbox-exporter", "grafana", "loki", "promtail", "demo-bootstrap",
}
ONE_SHOT = {"preflight", "postgres-init", "minio-init", "airflow-init", "serving-image", "demo-bootstrap"}
# Keys whose values hold a secret (a *_FILE key holds a path, not the secret itself).
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|_KEY|SQL_ALCHEMY_CONN|APP_DB_URL)(?!.*_FILE$)")


def compose(*args: str, env_file: str = "env.dev.example") -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    need(binary is not None, "docker-compose is not installed (apt-get install docker-compose)")
    return subprocess.run([binary, "--env-file", env_file, "-f", "docker-compose.yml", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=compose_env())


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_with_the_example_env(config):
    assert compose("config", "-q").returncode == 0
    assert set(config["services"]) == STACK


def test_start_order_waits_on_health_checks_and_init_jobs(config):
    services = config["services"]

    def waits(service: str) -> dict[str, str]:
        return {name: dep["condition"] for name, dep in services[service].get("depends_on", {}).items()}

    assert waits("postgres") == waits("minio") == {"preflight": "service_completed_successfully"}
    assert waits("postgres-init") == {"postgres": "service_healthy"}
    assert waits("minio-init") == {"minio": "service_healthy"}
    assert waits("mlflow") == {"postgres-init": "service_completed_successfully",
                               "minio-init": "service_completed_successfully"}
    assert waits("airflow-init") == {"postgres-init": "service_completed_successfully"}
    for component in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert waits(component)["airflow-init"] == "service_completed_successfully"
    assert waits("mlflow-autoserve") == {"mlflow": "service_healthy", "serving-image": "service_completed_successfully"}
    assert set(waits("demo-bootstrap").values()) == {"service_healthy"}
    assert {"mlflow-autoserve", "autoserve-gateway", "airflow-apiserver", "airflow-scheduler"} <= set(waits("demo-bootstrap"))
    # Everything a dependant waits on as healthy has a health check.
    for name, service in services.items():
        for dep, condition in waits(name).items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
    # One-shot jobs never restart; long-running services always come back.
    for name, service in services.items():
        expected = "no" if name in ONE_SHOT else "unless-stopped"
        assert service.get("restart", "no") == expected, name


def test_every_host_port_binds_loopback_unless_configured(config):
    published = {name: s["ports"] for name, s in config["services"].items() if s.get("ports")}
    assert {"mlflow", "autoserve-gateway", "airflow-apiserver", "grafana", "prometheus"} <= set(published)
    for name, ports in published.items():
        for port in ports:
            text = port if isinstance(port, str) else f"{port.get('host_ip')}:{port['published']}:{port['target']}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {text}"


def test_every_secret_comes_from_the_env_file():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    secrets = []

    def visit(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                visit(v, str(k))
        elif isinstance(node, list):
            for item in node:
                visit(item, key)
        elif isinstance(node, str) and SECRET_NAME.search(key):
            secrets.append((key, node))

    visit(raw)
    assert len(secrets) >= 10, secrets
    for key, value in secrets:
        assert "${" in value, f"{key} has a literal value in docker-compose.yml"
    # The example holds placeholders only, and .env (the real one) is never committed.
    example = dict(line.split("=", 1) for line in (ROOT / "env.dev.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for key, value in example.items():
        if "PASSWORD" in key or "SECRET" in key:
            assert value.startswith("change-me"), key
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_a_missing_secret_stops_compose_with_a_clear_message(tmp_path):
    partial = tmp_path / "partial.env"
    partial.write_text("\n".join(line for line in (ROOT / "env.dev.example").read_text().splitlines()
                                 if not line.startswith("POSTGRES_PASSWORD=")))
    result = compose("config", "-q", env_file=str(partial))
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_bind_mounts_and_dockerfiles_exist_in_the_repository(config):
    checked = 0
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith(str(ROOT)):
                assert os.path.exists(source), f"{name} mounts missing {source}"
                checked += 1
        if "build" in service:
            build = service["build"]
            assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file(), name
            checked += 1
    assert checked >= 10


# As under `mlops`: click caches a command's help option from the first context it sees, so a
# context without the root's -h would change the --help text that tests/docs compares.
MLOPS_CONTEXT = {"help_option_names": ["-h", "--help"]}


def test_autoserve_command_line_is_one_the_cli_accepts(config):
    """The compose command must not drift from the CLI: click parses it for real."""
    from mlops_autoserve.cli import autoserve

    args = config["services"]["mlflow-autoserve"]["command"]
    context = autoserve.make_context("autoserve", list(args), **MLOPS_CONTEXT)
    assert context.params["docker_network"] == config["networks"]["default"]["name"]
    assert str(context.params["targets_file"]).startswith("/var/lib/autoserve/targets/")
    assert context.params["no_gateway"] and context.params["leave_running"]


def test_gateway_command_line_is_one_the_cli_accepts(config):
    """The gateway service reads the route table the watcher writes into the shared volume."""
    from mlops_autoserve.cli import gateway

    service = config["services"]["autoserve-gateway"]
    entry = service["entrypoint"]
    assert entry[:2] == ["mlops", "gateway"]
    context = gateway.make_context("gateway", list(entry[2:]), **MLOPS_CONTEXT)

    def mounts(name: str) -> dict[str, tuple[str, str]]:  # target -> (source, mode); compose v1 gives strings
        parts = [v.split(":") for v in config["services"][name]["volumes"]]
        return {p[1]: (p[0], p[2] if len(p) > 2 else "rw") for p in parts}

    watcher_source, _ = mounts("mlflow-autoserve")["/var/lib/autoserve"]
    assert mounts("autoserve-gateway")[str(context.params["state_dir"])] == (watcher_source, "ro")


def test_postgres_init_job_creates_the_databases_once(tmp_path):
    """The postgres-init job's script against the real PostgreSQL: creates, then is a no-op."""
    psycopg = pytest.importorskip("psycopg")
    names = [f"mlops_init_{uuid.uuid4().hex[:6]}_{i}" for i in range(2)]
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres"}
    script = str(ROOT / "services/postgres/create-databases.sh")
    try:
        first = subprocess.run(["bash", script, *names], env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert first.stdout.split("\n")[:2] == [f"database {n} created" for n in names]
        again = subprocess.run(["bash", script, *names], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.split("\n")[:2] == [f"database {n} exists" for n in names]
        bad = subprocess.run(["bash", script, "x; DROP DATABASE postgres"], env=env, capture_output=True, text=True)
        assert bad.returncode == 2 and "invalid database name" in bad.stderr
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_postgres_init_job_gives_each_database_a_role_of_its_own(config):
    """DB:ROLE:VARIABLE against the real PostgreSQL: the role owns its database (tables made
    earlier by the superuser too), no other role may connect, a re-run sets a new password,
    and the password only ever travels in the environment."""
    psycopg = pytest.importorskip("psycopg")
    suffix = uuid.uuid4().hex[:6]
    db, role, other = f"mlops_init_{suffix}", f"mlops_role_{suffix}", f"mlops_other_{suffix}"
    script = str(ROOT / "services/postgres/create-databases.sh")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres"}
    spec = f"{db}:{role}:SERVICE_DB_PASSWORD"

    def run(password: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", script, spec], env={**env, "SERVICE_DB_PASSWORD": password},
                              capture_output=True, text=True, timeout=60)

    def scram(admin) -> str:
        return admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()[0]

    try:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db}"')  # a stack from before roles per service
            with psycopg.connect(PG_DSN, dbname=db, autocommit=True) as old:
                old.execute("CREATE TABLE runs (id serial PRIMARY KEY, name text)")
            first = run("it's a \"quoted\" $secret")
            assert first.returncode == 0, first.stderr
            assert first.stdout.splitlines() == [f"role {role} created", f"database {db} exists",
                                                 f"database {db} owned by {role}, closed to other roles"]
            hashed = scram(admin)
            assert hashed.startswith("SCRAM-SHA-256$")
            assert admin.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                 (db,)).fetchone()[0] == role
            admin.execute(f'CREATE ROLE "{other}" LOGIN')
            dsn = f"host=127.0.0.1 port=5432 dbname={db}"
            with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
                psycopg.connect(f"{dsn} user={other}").close()
            with psycopg.connect(f"{dsn} user={role}", autocommit=True) as own:  # the old table is its own now
                own.execute("INSERT INTO runs (name) VALUES ('x')")
                own.execute("ALTER TABLE runs ADD COLUMN note text")
            again = run("a-new-password")
            assert again.returncode == 0 and again.stdout.splitlines()[0] == f"role {role} password set"
            assert scram(admin) != hashed
            empty = run("")
            assert empty.returncode == 2 and empty.stderr.strip() == \
                f"the password of role {role} is empty: set SERVICE_DB_PASSWORD"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{other}"')
    # the stack: every service but the init job reaches PostgreSQL as its own role
    services = config["services"]
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:")
    airflow = services["airflow-scheduler"]["environment"]
    assert airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert airflow["APP_DB_URL"].startswith("postgresql+psycopg://appdb:")
    assert services["postgres-init"]["command"] == ["mlflow:mlflow:MLFLOW_DB_PASSWORD",
                                                    "airflow:airflow:AIRFLOW_DB_PASSWORD", "appdb:appdb:APP_DB_PASSWORD"]


def test_airflow_settings_are_the_ones_the_real_airflow_test_runs_with(config, tmp_path):
    """tests/mlops_toolkit/ops/test_bootstrap.py runs real Airflow 3 components with the
    compose stack's settings pointed at loopback: the two must not drift apart."""
    from tests.mlops_toolkit.ops.test_bootstrap import _airflow_env

    compose_env = config["services"]["airflow-scheduler"]["environment"]
    tested = _airflow_env(tmp_path, "postgresql+psycopg2://x@127.0.0.1/db", 8080, "sqlite://", "http://127.0.0.1:5000",
                          "iris", "scheduled-training")
    # the scheduler's health server serves only the container's health check, which
    # test_stack_up.py runs for real; the processes of the real-Airflow test have none
    health_only = {"AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"}
    airflow_keys = {k for k in compose_env if k.startswith("AIRFLOW__")} - health_only
    assert airflow_keys - set(tested) == set(), "compose sets Airflow options the real-Airflow test does not"
    assert {"APP_DB_URL", "MLFLOW_TRACKING_URI", "MLOPS_MODEL_NAME"} <= set(compose_env) & set(tested)
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "AIRFLOW__CORE__LOAD_EXAMPLES"):
        assert compose_env[key] == tested[key], key
    # Every Airflow service of the stack gets the same settings.
    for name in ("airflow-init", "airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"):
        service_env = config["services"][name]["environment"]
        assert {k: service_env[k] for k in airflow_keys} == {k: compose_env[k] for k in airflow_keys}, name


PREFLIGHT = ROOT / "services" / "preflight" / "check-secrets.sh"
SECRETS = ("POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_DB_PASSWORD", "APP_DB_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_WEBHOOK_ENCRYPTION_KEY", "AUTOSERVE_WEBHOOK_SECRET",
           "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY",
           "GRAFANA_ADMIN_PASSWORD")


def _preflight(values: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PREFLIGHT)], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], **values})


def _example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (ROOT / "env.dev.example").read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_stack_refuses_to_start_with_the_example_secrets_in_one_line(config):
    """The preflight job, the real script with bash, on env.dev.example's own values: every
    placeholder is named (the base64 Fernet placeholders too); the compose job passes it
    exactly the secrets it checks."""
    assert set(config["services"]["preflight"]["environment"]) == set(SECRETS)
    example = _example_env()
    assert len({example[name] for name in SECRETS}) == len(SECRETS)  # the example itself: one value per use
    refused = _preflight({name: example[name] for name in SECRETS})
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refusing to start the stack: ")
    assert all(f"{name} still holds a change-me placeholder" in lines[0] for name in SECRETS), lines[0]


def test_the_stack_starts_with_real_distinct_secrets_and_refuses_a_shared_one():
    from cryptography.fernet import Fernet

    real = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in SECRETS}
    real["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    real["MLFLOW_WEBHOOK_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    ok = _preflight(real)
    assert ok.returncode == 0 and ok.stdout.startswith(f"secrets checked: {len(SECRETS)} set, distinct"), ok.stderr
    shared = _preflight({**real, "AIRFLOW_API_SECRET_KEY": real["AIRFLOW_JWT_SECRET"]})
    assert shared.returncode == 1
    assert "AIRFLOW_JWT_SECRET and AIRFLOW_API_SECRET_KEY hold the same value" in shared.stderr
    bad_key = _preflight({**real, "AIRFLOW_FERNET_KEY": "not-a-key"})
    assert bad_key.returncode == 1 and "AIRFLOW_FERNET_KEY is not a Fernet key" in bad_key.stderr
    empty = _preflight({k: v for k, v in real.items() if k != "GRAFANA_ADMIN_PASSWORD"})
    assert empty.returncode == 1 and "GRAFANA_ADMIN_PASSWORD is empty" in empty.stderr



def test_no_secret_on_a_command_line(config):
    """`ps` shows every process's arguments to anyone on the host: secrets go in the
    environment (MLflow reads its store URI from MLFLOW_BACKEND_STORE_URI)."""
    example = _example_env()
    secrets = {example[name] for name in SECRETS}
    for name, service in config["services"].items():
        argv = [str(a) for a in (service.get("command") or []) + (service.get("entrypoint") or [])]
        leaked = [a for a in argv if any(secret in a for secret in secrets)]
        assert leaked == [], f"{name}: {leaked}"
    assert "postgresql+psycopg://" in config["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]


def test_only_the_watcher_holds_the_docker_socket(config):
    """Whoever holds the socket is root on the host: autoserve's watcher needs it (containers,
    image builds), nothing else gets it; Promtail reads the log files read-only instead."""
    holders = [name for name, service in config["services"].items()
               if any("docker.sock" in str(volume) for volume in service.get("volumes", []))]
    assert holders == ["mlflow-autoserve"]


def test_the_swarm_override_puts_the_stack_on_an_external_overlay_and_the_watcher_on_swarm():
    """docker-compose.swarm.yml with AUTOSERVE_RUNTIME=swarm: what docs/CLUSTER.md runs on a manager."""
    from mlops_autoserve.cli import autoserve

    binary = shutil.which("docker-compose")
    need(binary is not None, "docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([binary, "--env-file", "env.dev.example", "-f", "docker-compose.yml", "-f",
                             "docker-compose.swarm.yml", "config"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={**compose_env(), "AUTOSERVE_RUNTIME": "swarm"})
    assert result.returncode == 0, result.stderr
    swarm = yaml.safe_load(result.stdout)
    assert swarm["networks"]["default"] == {"external": True, "name": "mlops"}
    args = swarm["services"]["mlflow-autoserve"]["command"]
    context = autoserve.make_context("autoserve", ["--runtime", "docker", *args], **MLOPS_CONTEXT)  # the image's entrypoint first
    assert context.params["runtime"] == "swarm" and context.params["docker_network"] == "mlops"
    assert not context.params["docker_publish"]  # the gateway, on the overlay, calls each task's address
