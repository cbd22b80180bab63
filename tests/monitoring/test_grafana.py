"""Grafana provisioning and dashboards.

Grafana itself cannot be installed on the test machines (not in Debian, PyPI or npm), so
the dashboards are checked for the structure Grafana needs, their data sources against
the provisioning file, their PromQL with the real promtool parser and their LogQL labels
against what Promtail attaches. Metric names are checked against live services in
test_metric_names.py.
"""

from __future__ import annotations

import itertools
import re
import subprocess

import yaml

from tests.monitoring.support import (
    MONITORING,
    PROVISIONING_DIR,
    compose_services,
    dashboard_queries,
    dashboards,
    load_yaml,
    promql_queries,
    stream_selectors,
    substitute_grafana_variables,
)

DATASOURCES = load_yaml(PROVISIONING_DIR / "datasources" / "datasources.yml")["datasources"]


def test_datasources_have_fixed_uids_and_compose_urls():
    by_uid = {d["uid"]: d for d in DATASOURCES}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["loki"]["type"] == "loki" and by_uid["loki"]["url"] == "http://loki:3100"
    assert sum(d.get("isDefault", False) for d in DATASOURCES) == 1
    assert {"prometheus", "loki"} <= compose_services()


def test_dashboard_provider_reads_the_mounted_directory():
    (provider,) = load_yaml(PROVISIONING_DIR / "dashboards" / "dashboards.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"  # docker-compose.yml mounts it there


def test_dashboards_are_complete_with_unique_uids():
    boards = dashboards()
    assert {b["title"] for b in boards.values()} == {"Service Health Detailed", "MLflow Serving", "Batch & Drift", "Rollouts"}
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids) and all(0 < len(uid) <= 40 for uid in uids)  # Grafana's uid limit
    for name, board in boards.items():
        assert board["schemaVersion"] >= 36 and board["panels"], name
        panel_ids = [p["id"] for p in board["panels"]]
        assert len(set(panel_ids)) == len(panel_ids), f"{name}: duplicate panel ids"
        for panel in board["panels"]:
            assert panel["title"] and panel["type"] and panel["targets"], f"{name}: {panel}"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs) and all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_panels_fit_the_24_column_grid_without_overlapping():
    for name, board in dashboards().items():
        boxes = []
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert {"x", "y", "w", "h"} <= set(g) and g["w"] > 0 and g["h"] > 0, panel["title"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{name}: {panel['title']} leaves the grid"
            boxes.append((panel["title"], g))
        for (a, p), (b, q) in itertools.combinations(boxes, 2):
            overlap = p["x"] < q["x"] + q["w"] and q["x"] < p["x"] + p["w"] and p["y"] < q["y"] + q["h"] and q["y"] < p["y"] + p["h"]
            assert not overlap, f"{name}: panels {a!r} and {b!r} overlap"


def test_every_datasource_reference_is_provisioned():
    provisioned = {(d["type"], d["uid"]) for d in DATASOURCES}
    for name, board in dashboards().items():
        refs = [(p["title"], p["datasource"]) for p in board["panels"]]
        refs += [(p["title"], t["datasource"]) for p in board["panels"] for t in p["targets"] if "datasource" in t]
        refs += [(f"${v['name']}", v["datasource"]) for v in board.get("templating", {}).get("list", [])
                 if "datasource" in v]
        for where, ds in refs:
            assert (ds["type"], ds["uid"]) in provisioned, f"{name}: {where}: {ds} is not provisioned"


def test_variables_used_in_queries_are_defined():
    for name, board in dashboards().items():
        defined = {v["name"] for v in board.get("templating", {}).get("list", [])}
        for query in (q for q in dashboard_queries() if q.where.startswith(name)):
            for variable in set(re.findall(r"\$\{?([a-z]\w*)", query.expr)):
                assert variable in defined, f"{query.where}: ${variable} is not a variable of {name}"


def test_every_promql_query_parses_with_promtool(promtool, tmp_path):
    """All PromQL (panels, variable selectors, alerts) as recording rules: promtool check
    rules parses each expression with Prometheus's own parser."""
    queries = promql_queries()
    assert len(queries) > 40
    rules = [{"record": f"check:query_{i}", "expr": substitute_grafana_variables(q.expr)} for i, q in enumerate(queries)]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", "queries.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    failing = [queries[int(i)].where for i in re.findall(r'"check:query_(\d+)"', result.stdout + result.stderr)]
    assert result.returncode == 0, f"{failing}\n{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def _promtail_labels() -> set[str]:
    """Labels Promtail attaches: the static ones plus the pipeline's labels stages."""
    (job,) = load_yaml(MONITORING / "promtail" / "promtail.yml")["scrape_configs"]
    labels = {label for static in job["static_configs"] for label in static["labels"] if not label.startswith("__")}
    for stage in job["pipeline_stages"]:
        labels |= set(stage.get("labels") or {})
    return labels


def test_logql_queries_select_streams_promtail_creates():
    """Structural only (no Loki here): each query has a stream selector with a non-empty
    matcher, on labels Promtail attaches, naming services that exist."""
    labels = _promtail_labels()
    services = compose_services() | {"model-serving"}  # promtail.yml's name for autoserve's serving containers
    logql = [q for q in dashboard_queries() if q.datasource == "loki"]
    assert len(logql) >= 2
    for query in logql:
        streams = list(stream_selectors(query.expr))
        assert streams and all(streams), f"{query.where}: no stream selector in {query.expr!r}"
        for matchers in streams:
            assert any(op == "=" and value for _, op, value in matchers), f"{query.where}: Loki needs a non-empty matcher"
            for label, op, value in matchers:
                assert label in labels, f"{query.where}: Promtail attaches no label {label!r}"
                if label == "service" and op == "=":
                    assert value in services, f"{query.where}: no service {value!r}"
