"""Every metric and label an alert or a dashboard queries is one the services export.

A misspelt metric name is not an error in PromQL: the panel is empty and the alert never
fires. So the names are checked against real ``/metrics`` pages of running services (the
live stack in conftest.py): the autoserve gateway, the Pushgateway after a real drift
push, an MLflow server with ``--expose-prometheus`` and the blackbox exporter's probe.
"""

from __future__ import annotations

import json
import urllib.parse
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring.conftest import get_text
from tests.monitoring.support import (
    PROMETHEUS_DIR,
    Selector,
    load_yaml,
    metric_names,
    promql_queries,
    selectors,
    substitute_grafana_variables,
)

# Series Prometheus makes itself (https://prometheus.io/docs/concepts/jobs_instances/ and
# alerting rules), not found on any /metrics page.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                  "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}

Exported = dict[str, dict[str, set[str]]]  # sample name -> label -> values seen


def parse_exposition(text: str, into: Exported) -> Exported:
    """Sample names as queried: counters with _total, histograms as _bucket/_sum/_count."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = into.setdefault(sample.name, defaultdict(set))
            for label, value in sample.labels.items():
                labels[label].add(value)
    return into


def scrape_job_labels() -> tuple[set[str], set[str]]:
    """(job names, label names Prometheus attaches to targets) from prometheus.yml."""
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    labels = {"job", "instance"}
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            labels |= set(group.get("labels", {}))
    return jobs, labels


def test_selector_reader_finds_metric_names_and_matchers():
    expr = ('histogram_quantile(0.95, sum by (model, alias, le) (rate(autoserve_request_duration_seconds_bucket'
            '{model=~"$model", code!="2.."}[$__rate_interval]))) > 0.5 or on (job) group_left time()'
            ' - absent(up{job="x"}) unless {__name__="push_time_seconds"} offset 1h')
    assert selectors(substitute_grafana_variables(expr)) == [
        Selector("autoserve_request_duration_seconds_bucket", (("model", "=~", "x"), ("code", "!=", "2.."))),
        Selector("up", (("job", "=", "x"),)),
        Selector(None, (("__name__", "=", "push_time_seconds"),)),
    ]
    assert selectors('sum without (instance) (count_values("v", a)) / ignoring (le) b and c atan2 d') == [
        Selector(name, ()) for name in "abcd"]


def test_the_monitoring_files_query_the_contract_metrics():
    """Not vacuous: the extraction sees the alerts' and dashboards' main metrics."""
    used = metric_names(promql_queries())
    assert {"autoserve_endpoint_info", "autoserve_requests_total", "autoserve_request_duration_seconds_bucket",
            "autoserve_deploy_total", "autoserve_last_reconcile_timestamp_seconds", "model_drift_ks_statistic",
            "model_drift_detected", "push_time_seconds", "probe_success", "mlflow_http_request_total", "up"} <= set(used)


@pytest.fixture(scope="module")
def exported(live_stack) -> Exported:
    """What the four services export right now, merged."""
    stack = live_stack
    found: Exported = {}
    parse_exposition(stack.watcher.metrics_text(), found)
    parse_exposition(get_text(stack.pushgateway.url + "/metrics"), found)
    mlflow_text = get_text(stack.mlflow.uri + "/metrics")
    assert "mlflow_http_request_total" in mlflow_text, "MLflow exports no request metrics yet"
    parse_exposition(mlflow_text, found)
    query = urllib.parse.urlencode({"target": stack.watcher.url + "/health", "module": "http_2xx"})
    parse_exposition(get_text(f"{stack.blackbox.url}/probe?{query}"), found)
    return found


def test_every_queried_metric_is_exported(exported):
    missing = {name: where for name, where in metric_names(promql_queries()).items()
               if name not in exported and name not in PROMETHEUS_OWN}
    assert not missing, f"queried but exported by no service: {json.dumps(missing, indent=1)}"


def test_label_matchers_use_exported_labels_and_values(exported):
    """Label names exist on the series (or are target labels Prometheus adds); exact values
    (=, !=) are values the service really emits, or a job of prometheus.yml."""
    jobs, target_labels = scrape_job_labels()
    target_labels |= {"model", "alias", "version", "__name__"}  # + file_sd labels of serving probes (targets.py)
    problems = []
    for query in promql_queries():
        for selector in selectors(substitute_grafana_variables(query.expr)):
            if selector.metric is None or selector.metric in PROMETHEUS_OWN - {"up"}:
                continue
            labels = exported.get(selector.metric, {})
            for label, op, value in selector.matchers:
                if label in labels:
                    if op in ("=", "!=") and value not in labels[label]:
                        problems.append(f"{query.where}: {selector.metric}{{{label}{op}{value!r}}}: "
                                        f"exported values {sorted(labels[label])}")
                elif label == "job":
                    if op in ("=", "!=") and value not in jobs:
                        problems.append(f"{query.where}: job {value!r} is no job of prometheus.yml {sorted(jobs)}")
                elif label not in target_labels:
                    problems.append(f"{query.where}: {selector.metric} has no label {label!r}")
    assert not problems, "\n".join(problems)


def test_mlflow_server_exports_flask_request_metrics(exported):
    """The names `--expose-prometheus` gives (prometheus-flask-exporter, prefix mlflow)."""
    assert {"method", "status"} <= set(exported["mlflow_http_request_total"])
    assert "le" in exported["mlflow_http_request_duration_seconds_bucket"]


def test_serving_probe_gets_ping_of_every_served_alias(live_stack):
    """The blackbox module probes what autoserve writes for Prometheus, and succeeds: GET,
    since `mlflow models serve` answers HEAD /ping with 405."""
    groups = json.loads((live_stack.targets_dir / "serving.json").read_text())
    production = [g for g in groups if g["labels"]["alias"] == "Production"]
    assert production and production[0]["labels"]["version"] == str(live_stack.good_version)
    for target in production[0]["targets"]:
        query = urllib.parse.urlencode({"target": target, "module": "http_2xx"})
        text = get_text(f"{live_stack.blackbox.url}/probe?{query}")
        assert "probe_success 1" in text.splitlines() and "probe_http_status_code 200" in text.splitlines(), text
