"""prometheus.yml and alerts.yml: checked by the real promtool, then loaded by a real
Prometheus that scrapes the live stack (conftest.py) and probes what autoserve serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from mlops_toolkit.ops.processes import free_port
from tests.daemons import Daemon, binary
from tests.harness import wait_for
from tests.monitoring.conftest import get_text
from tests.monitoring.support import (
    PROMETHEUS_DIR,
    compose_services,
    dashboard_queries,
    load_yaml,
    substitute_grafana_variables,
)


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    """Run in monitoring/prometheus: the config's relative paths resolve there."""
    result = subprocess.run([promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_config_is_valid(promtool):
    result = promtool_run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_alert_rules_are_valid(promtool):
    result = promtool_run(promtool, "check", "rules", "alerts.yml")
    assert re.search(r"SUCCESS: \d+ rules found", result.stdout)


def test_alert_unit_tests_pass(promtool):
    result = promtool_run(promtool, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    alerts = {r["alert"] for g in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for r in g["rules"]}
    cases = [c for t in load_yaml(PROMETHEUS_DIR / "alerts_test.yml")["tests"] for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert len(alerts) >= 9
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - silent == set(), "alerts without a not-firing test"


def test_every_alert_has_severity_and_explains_itself():
    for group in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            if "model" in rule["expr"] or "probe_success{job=\"blackbox-serving\"}" in rule["expr"]:
                assert "$labels.model" in rule["annotations"]["summary"], rule["alert"]


def test_targets_are_compose_services():
    """Scrape and probe targets use the compose stack's service names and ports."""
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    hosts = {re.sub(r"^https?://", "", target).split("/")[0].split(":")[0]
             for job in config["scrape_configs"] for group in job.get("static_configs", [])
             for target in group["targets"]}
    hosts |= {rule["replacement"].split(":")[0] for job in config["scrape_configs"]
              for rule in job.get("relabel_configs", []) if rule.get("target_label") == "__address__"}
    assert hosts - {"localhost"} <= compose_services(), hosts - compose_services()
    assert {"mlflow", "mlflow-autoserve", "pushgateway", "blackbox-exporter"} <= hosts


# -- a real Prometheus on the live stack -------------------------------------------------------

def _local_config(stack, directory: Path, prometheus_port: int) -> Path:
    """The repository's config with compose host names replaced by the live stack's
    loopback ports (services not running here get a closed port) and 1 s intervals."""
    shutil.copytree(PROMETHEUS_DIR, directory)
    closed = f"127.0.0.1:{free_port()}"
    hosts = {
        "localhost:9090": f"127.0.0.1:{prometheus_port}",
        "autoserve-gateway:8000": stack.watcher.url.removeprefix("http://"),
        "autoserve-gateway:8001": stack.watcher.admin_url.removeprefix("http://"),  # gateway instance 0
        "autoserve-gateway:8002": f"127.0.0.1:{stack.watcher.admin_port + 1}",  # instance 1, as in compose
        "mlflow-autoserve:8002": stack.watcher.watcher_url.removeprefix("http://"),
        "mlflow:5000": stack.mlflow.uri.removeprefix("http://"),
        "pushgateway:9091": stack.pushgateway.url.removeprefix("http://"),
        "blackbox-exporter:9115": stack.blackbox.url.removeprefix("http://"),
        "airflow-apiserver:8080": closed, "grafana:3000": closed, "loki:3100": closed,
        "promtail:9080": closed, "minio:9000": closed,
    }
    path = directory / "prometheus.yml"
    text = path.read_text().replace("15s", "1s").replace("targets/*.json", f"{stack.targets_dir}/*.json")
    for compose, local in hosts.items():
        assert compose in text, compose
        text = text.replace(compose, local)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def prometheus(live_stack, tmp_path_factory):
    prometheus_bin = binary("prometheus")
    root = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = _local_config(live_stack, root / "config", port)
    server = Daemon([prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}"], port, root / "prometheus.log", ready_path="/-/ready")
    yield server
    server.stop()


def query(prometheus, expr: str) -> list[dict]:
    body = json.loads(get_text(f"{prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_services_and_probes_what_autoserve_serves(prometheus, live_stack):
    stack = live_stack
    serving = wait_for(lambda: query(prometheus, 'probe_success{job="blackbox-serving", alias="Production"} == 1'),
                       30, what="a successful probe of Production")
    assert serving[0]["metric"]["model"] == stack.model
    assert serving[0]["metric"]["version"] == str(stack.good_version)
    assert serving[0]["metric"]["instance"].endswith("/ping")
    jobs = {"prometheus", "mlflow", "mlflow-autoserve", "pushgateway", "blackbox-exporter"}
    wait_for(lambda: jobs <= {r["metric"]["job"] for r in query(prometheus, "up == 1")}, 30, what=f"{jobs} up")
    healthy = {"mlflow", "mlflow-autoserve"}
    wait_for(lambda: healthy <= {r["metric"]["service"] for r in query(prometheus, 'probe_success{job="service-health"} == 1')},
             30, what=f"health probes of {healthy} succeed")
    # honor_labels keeps the pushing job's labels
    assert query(prometheus, f'push_time_seconds{{job="model_monitoring", model="{stack.model}"}}')


def test_real_prometheus_evaluates_every_rule_and_alerts_on_real_data(prometheus, live_stack):
    def evaluated():
        body = json.loads(get_text(prometheus.url + "/api/v1/rules"))
        rules = [r for g in body["data"]["groups"] for r in g["rules"]]
        return rules if all(r["lastEvaluation"] > "2000" for r in rules) else None

    rules = wait_for(evaluated, 30, what="every rule evaluated once")
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules

    def alerts():
        return {(a["metric"]["alertname"], a["metric"].get("model") or a["metric"].get("service"))
                for a in query(prometheus, "ALERTS")}

    expected = {("ModelDriftDetected", live_stack.model),  # the pushed check found drift: firing
                ("ServiceDown", "grafana")}  # not running here: pending
    wrong = {("ServiceDown", "mlflow"), ("ServiceDown", "mlflow-autoserve"), ("AutoserveReconcileStale", None),
             ("ServingEndpointDown", live_stack.model)}
    # AutoserveReconcileStale is pending until the first scrape of autoserve: wait it out.
    wait_for(lambda: expected <= alerts() and not wrong & alerts(), 30, what=f"alerts {expected} and none of {wrong}")


def test_every_dashboard_query_runs_on_real_prometheus(prometheus):
    """Parsing is not enough: e.g. a type error (range vs instant vector) or many-to-many
    matching only shows when a query runs against data."""
    failures, ran = [], 0
    for q in dashboard_queries():
        if q.datasource != "prometheus":
            continue
        expr = substitute_grafana_variables(q.expr).replace('"x"', '".*"')
        body = json.loads(get_text(f"{prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}),
                                   allow_error=True))
        ran += 1
        if body.get("status") != "success":
            failures.append((expr, body.get("error")))
    assert ran >= 20, f"only {ran} Prometheus queries found in the dashboards"
    assert failures == [], failures
