"""The compose stack, up for real: ``docker-compose up`` of docker-compose.yml on this host.

Only what cannot be pulled here is swapped (services/offline/docker-compose.offline.yml):
PostgreSQL, Prometheus, Pushgateway and the blackbox exporter built from Debian packages,
moto's S3 server standing in for MinIO (MinIO cannot run here), Grafana, Loki and Promtail
left out by profile (no package for them here; their files are checked in tests/monitoring).
Everything else is the real file: the preflight and init jobs, MLflow on PostgreSQL with S3
artifacts, Airflow 3's four services, the autoserve watcher and gateway on the Docker
runtime, Prometheus scraping the real targets, and demo-bootstrap to its prediction. The
services talk over the stack's own compose network; the test calls only ports published on
127.0.0.1, each moved to a free port (this machine's PostgreSQL holds 5432).

One stack per session (``make stack-test`` runs this file alone): up, then the checks,
then the documented teardown, which must leave no container, volume, network or serving
container behind.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlops_toolkit.ops.gateway_client import iris_payload
from mlops_toolkit.ops.processes import free_port
from tests.conftest import need, repo_root
from tests.stack.conftest import compose_env, docker

pytestmark = pytest.mark.slow
ROOT = repo_root()
OVERRIDE = "services/offline/docker-compose.offline.yml"
PORTS = ("MLFLOW_PORT", "GATEWAY_PORT", "GATEWAY_ADMIN_PORT", "AIRFLOW_PORT", "GRAFANA_PORT", "PROMETHEUS_PORT",
         "PUSHGATEWAY_PORT", "LOKI_PORT", "MINIO_PORT", "MINIO_CONSOLE_PORT", "POSTGRES_PORT")
# Health probes of services that do not run here: left out by profile, or a stand-in that
# has no such URL (moto answers S3, not MinIO's /minio/health/live).
NOT_HERE = ("grafana", "loki", "promtail", "minio")
UP_TIMEOUT_S = 1500


@dataclass
class Stack:
    project: str
    env_file: Path
    env: dict[str, str]
    up_seconds: float = 0.0
    first_prediction_s: float = 0.0
    bootstrap_log: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", "--env-file", str(self.env_file), "-p", self.project,
                               "-f", "docker-compose.yml", "-f", OVERRIDE, *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=compose_env())

    def url(self, port_variable: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.env[port_variable]}{path}"

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def logs(self, *services: str, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), *services).stdout[-6000:]

    def teardown(self) -> list[subprocess.CompletedProcess]:
        """docs/DEMO.md's teardown, as written there: stop the watcher (it would recreate what
        the next step removes), remove the serving containers by their owner label, then down -v."""
        steps = [self.compose("stop", "mlflow-autoserve", timeout=120)]
        serving = docker("ps", "-aq", "--filter", f"label=mlops.autoserve.instance={self.project}").stdout.split()
        if serving:
            steps.append(docker("rm", "-f", *serving))
        steps.append(self.compose("down", "-v", timeout=300))
        return steps

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": docker("ps", "-aq", "--filter", label).stdout.split(),
            "serving containers": docker("ps", "-aq", "--filter", f"label=mlops.autoserve.instance={self.project}").stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", f"name=^{self.project}$").stdout.split(),
        }


def write_env_file(path: Path, project: str) -> dict[str, str]:
    """env.dev.example with every placeholder replaced by a distinct generated secret, the
    host ports moved to free ones, the project name and image tag of this run."""
    fernet = lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()  # noqa: E731
    overrides = {name: str(free_port()) for name in PORTS}
    overrides.update(COMPOSE_PROJECT_NAME=project, IMAGE_TAG=project, BOOTSTRAP_TIMEOUT="1200",
                     AIRFLOW_JWT_SECRET=secrets.token_urlsafe(64), AIRFLOW_FERNET_KEY=fernet(),
                     MLFLOW_WEBHOOK_ENCRYPTION_KEY=fernet())
    lines = []
    values: dict[str, str] = {}
    for line in (ROOT / "env.dev.example").read_text().splitlines():
        match = re.match(r"^([A-Z_0-9]+)=(.*)$", line)
        if match:
            name, value = match.groups()
            if name in overrides:
                value = overrides[name]
            elif "change-me" in value:
                value = secrets.token_urlsafe(24)
            values[name] = value
            line = f"{name}={value}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return values


def tag_images(images: dict[str, str], tag: str) -> list[str]:
    """The compose file names every project image mlops-toolkit/<name>:${IMAGE_TAG}."""
    tagged = []
    for name, image in images.items():
        target = f"mlops-toolkit/{name}:{tag}"
        assert docker("tag", image, target).returncode == 0
        tagged.append(target)
    return tagged


def wait_for_exit(stack: Stack, service: str, timeout: float) -> int:
    """Wait for a one-shot service's container to exit; fail at once, with the logs, when an
    earlier one-shot job failed (nothing would start after it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container = stack.container(service)
        if container:
            state = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", container).stdout.split()
            if state and state[0] == "exited":
                return int(state[1])
        time.sleep(1)
    pytest.fail(f"{service} did not finish in {timeout:.0f} s:\n{stack.logs()}")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(shutil.which("docker-compose") is not None, "docker-compose is not installed (apt-get install docker-compose)")
    project = f"mlopsup{uuid.uuid4().hex[:6]}"
    env_file = tmp_path_factory.mktemp("stack") / ".env"
    stack = Stack(project, env_file, write_env_file(env_file, project))
    tagged = tag_images(images, project)
    try:
        started = time.monotonic()
        up = stack.compose("up", "-d", "--no-build", timeout=UP_TIMEOUT_S)
        stack.up_seconds = time.monotonic() - started
        assert up.returncode == 0, f"docker-compose up failed:\n{up.stderr[-4000:]}\n{stack.logs()}"
        code = wait_for_exit(stack, "demo-bootstrap", UP_TIMEOUT_S - stack.up_seconds)
        stack.first_prediction_s = time.monotonic() - started
        stack.bootstrap_log = stack.compose("logs", "--no-color", "demo-bootstrap").stdout
        assert code == 0, f"demo-bootstrap exited {code}:\n{stack.bootstrap_log[-4000:]}\n{stack.logs()}"
        print(f"\nstack {project}: up returned after {stack.up_seconds:.0f} s, first prediction at "
              f"{stack.first_prediction_s:.0f} s after up")
        yield stack
    finally:
        if stack.leftovers()["containers"]:
            stack.teardown()
        docker("rmi", *tagged)  # the tags only: the images keep their content tags


def test_demo_bootstrap_runs_the_dags_and_gets_a_prediction_from_the_gateway(stack):
    log = stack.bootstrap_log
    assert re.search(r"dag_data_load\s+\S+\s+success", log), log[-3000:]
    assert re.search(r"dag_training\s+\S+\s+success", log), log[-3000:]
    prediction = re.search(r"prediction\s+(\[.*\])\s+\(X-Model-Version: (\d+)\)", log)
    assert prediction, log[-3000:]
    assert len(json.loads(prediction.group(1))) == 2  # two iris rows in, two classes out
    # The same model answers a client on the host, through the published gateway port.
    request = urllib.request.Request(stack.url("GATEWAY_PORT", "/serve/iris/Production/invocations"), method="POST",
                                     data=json.dumps(iris_payload(2)).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["X-Model-Version"] == prediction.group(2)
        assert json.load(response)["predictions"] == json.loads(prediction.group(1))


def test_prometheus_scrapes_every_target_and_every_probe_succeeds(stack):
    """Every scrape target up (MLflow, gateway, watcher, Pushgateway, blackbox, Prometheus
    and the served model's /ping), and every health probe of a service that runs here passes."""
    deadline = time.monotonic() + 120  # 15 s scrape interval, 30 s file_sd refresh
    while True:
        targets = get_json(stack.url("PROMETHEUS_PORT", "/api/v1/targets"))["data"]["activeTargets"]
        down = {t["scrapeUrl"]: t.get("lastError", "") for t in targets if t["health"] != "up"}
        jobs = {t["labels"]["job"] for t in targets}
        served = [t for t in targets if t["labels"]["job"] == "blackbox-serving"]
        query = urllib.parse.urlencode({"query": "probe_success"})
        probes = get_json(stack.url("PROMETHEUS_PORT", f"/api/v1/query?{query}"))["data"]["result"]
        failing = {p["metric"]["instance"] for p in probes if p["value"][1] != "1"
                   and not any(name in p["metric"]["instance"] for name in NOT_HERE)}
        if (not down and served and not failing and len(probes) >= 8) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert not down, down
    assert jobs == {"prometheus", "mlflow", "mlflow-autoserve", "pushgateway", "blackbox-exporter", "blackbox-serving",
                    "service-health"}
    assert served and served[0]["labels"]["model"] == "iris", served
    assert not failing, probes
    assert len(probes) >= 8  # 7 service health URLs and at least one served model


def test_the_dags_and_the_watcher_write_the_audit_trail_to_s3(stack, monkeypatch):
    """Governance across containers: the training DAG's promotion and alias moves (acting as
    the airflow user that runs the tasks) and the watcher's deploys, in the S3 bucket."""
    from mlops_toolkit.audit import list_events

    monkeypatch.setenv("AWS_ENDPOINT_URL", stack.url("MINIO_PORT"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.env["MINIO_ROOT_USER"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.env["MINIO_ROOT_PASSWORD"])
    events = list_events(uri=f"s3://{stack.env['AUDIT_BUCKET']}/trail", model="iris")
    by_action = {}
    for event in events:
        by_action.setdefault(event.action, []).append(event)
    assert {"promote", "alias.set", "autoserve.deploy"} <= set(by_action), sorted(by_action)
    assert {e.user for e in by_action["promote"] + by_action["alias.set"]} == {"airflow"}
    assert all(e.environment == "dev" for e in events)


def test_documented_teardown_leaves_nothing_behind(stack):
    serving = docker("ps", "-q", "--filter", f"label=mlops.autoserve.instance={stack.project}").stdout.split()
    assert serving, "the watcher started no serving container"
    steps = stack.teardown()
    assert all(step.returncode == 0 for step in steps), [step.stderr[-2000:] for step in steps]
    assert stack.leftovers() == {"containers": [], "serving containers": [], "volumes": [], "networks": []}
