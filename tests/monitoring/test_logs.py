"""Loki and Promtail configuration: structural checks only.

Neither Loki nor Promtail can be installed on the test machines (not in Debian, PyPI or
npm, and no container registry is reachable), so their files cannot be loaded by the real
programs here. These tests pin what the stack relies on: Loki listens on 3100 with
filesystem storage and a TSDB v13 schema; Promtail discovers containers through the
Docker socket, names them by compose service, parses the services' JSON log lines and
pushes to that Loki. The JSON field names are checked against the real formatter.
"""

from __future__ import annotations

import io
import json
import logging

from mlops_toolkit.jsonlog import json_formatter
from tests.monitoring.support import MONITORING, compose_services, load_yaml

LOKI = load_yaml(MONITORING / "loki" / "loki.yml")
PROMTAIL = load_yaml(MONITORING / "promtail" / "promtail.yml")


def test_loki_is_a_single_node_on_port_3100_with_filesystem_storage():
    assert LOKI["auth_enabled"] is False  # single tenant: Promtail and Grafana send no org id
    assert LOKI["server"]["http_listen_port"] == 3100
    common = LOKI["common"]
    assert common["replication_factor"] == 1 and common["ring"]["kvstore"]["store"] == "inmemory"
    assert common["storage"]["filesystem"]["chunks_directory"].startswith("/loki/")  # the loki-data volume
    assert LOKI["compactor"]["retention_enabled"] is False


def test_loki_schema_is_tsdb_v13_on_the_filesystem():
    (period,) = LOKI["schema_config"]["configs"]
    assert (period["store"], period["schema"], period["object_store"]) == ("tsdb", "v13", "filesystem")
    assert period["index"]["period"] == "24h"  # TSDB requires 24h index periods


def test_promtail_reads_docker_containers_and_pushes_to_loki():
    (client,) = PROMTAIL["clients"]
    assert client["url"] == "http://loki:3100/loki/api/v1/push" and "loki" in compose_services()
    (job,) = PROMTAIL["scrape_configs"]
    (docker,) = job["docker_sd_configs"]
    assert docker["host"] == "unix:///var/run/docker.sock"
    targets = {(tuple(r["source_labels"]), r["target_label"]) for r in job["relabel_configs"]}
    assert (("__meta_docker_container_label_com_docker_compose_service",), "service") in targets
    assert (("__meta_docker_container_name",), "container") in targets
    for docker_label, label in (("mlops_model", "model"), ("mlops_version", "version"), ("mlops_autoserve", "autoserve")):
        assert ((f"__meta_docker_container_label_{docker_label}",), label) in targets


def test_promtail_parses_json_lines_into_low_cardinality_labels():
    stages = {name: body for stage in PROMTAIL["scrape_configs"][0]["pipeline_stages"] for name, body in stage.items()}
    assert {"level", "logger", "message", "model", "alias", "version"} <= set(stages["json"]["expressions"])
    assert set(stages["labels"]) == {"level", "model", "alias"}  # never message: one stream per line


def test_json_stage_fields_are_what_the_services_log():
    """The field names Promtail extracts are the ones mlops_toolkit.jsonlog writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter("autoserve"))
    logger = logging.getLogger("monitoring-test")
    logger.addHandler(handler)
    try:
        logger.error("deploy failed", extra={"model": "iris", "alias": "Production", "version": 3})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    expressions = PROMTAIL["scrape_configs"][0]["pipeline_stages"][0]["json"]["expressions"]
    assert {source: line[source] for source in expressions.values()} == {
        "level": "ERROR", "logger": "monitoring-test", "message": "deploy failed", "model": "iris",
        "alias": "Production", "version": 3}
