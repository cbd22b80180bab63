"""Loki and Promtail configuration: structural checks only.

Neither Loki nor Promtail can be installed on the test machines (not in Debian, PyPI or
npm, and no container registry is reachable), so their files cannot be loaded by the real
programs here. These tests pin what the stack relies on: Loki listens on 3100 with
filesystem storage and a TSDB v13 schema; Promtail reads the containers' log files (not
the Docker socket), names them from the attributes Docker writes into each line, parses
the services' JSON log lines and pushes to that Loki. The JSON field names are checked against the real formatter.
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


def _stages(name: str) -> list[dict]:
    return [stage[name] for stage in PROMTAIL["scrape_configs"][0]["pipeline_stages"] if name in stage]


def test_promtail_reads_container_log_files_not_the_socket_and_pushes_to_loki():
    (client,) = PROMTAIL["clients"]
    assert client["url"] == "http://loki:3100/loki/api/v1/push" and "loki" in compose_services()
    (job,) = PROMTAIL["scrape_configs"]
    assert "docker_sd_configs" not in job
    (static,) = job["static_configs"]
    assert static["labels"]["__path__"] == "/var/lib/docker/containers/*/*-json.log"
    compose = load_yaml(MONITORING.parent / "docker-compose.yml")
    volumes = compose["services"]["promtail"]["volumes"]
    assert "/var/lib/docker/containers:/var/lib/docker/containers:ro" in volumes
    assert not any("docker.sock" in v for v in volumes)


def test_every_container_writes_log_lines_promtail_can_name():
    """Compose gives every service the json-file options that put its name in each line."""
    compose = load_yaml(MONITORING.parent / "docker-compose.yml")
    for name, service in compose["services"].items():
        logging_ = service["logging"]
        assert logging_["driver"] == "json-file", name
        assert logging_["options"]["labels"] == "com.docker.compose.service" and logging_["options"]["tag"] == \
            "{{.Name}}", name


def test_promtail_parses_docker_envelopes_then_json_lines_into_low_cardinality_labels():
    envelope, service_line = _stages("json")
    assert envelope["expressions"]["output"] == "log" and _stages("output") == [{"source": "output"}]
    assert {"level", "logger", "message", "model", "alias", "version"} <= set(service_line["expressions"])
    first, last = _stages("labels")
    assert set(first) == {"stream", "service", "container", "autoserve", "version"}
    assert set(last) == {"level", "model", "alias"}  # never message: one stream per line


def test_envelope_expressions_read_a_real_docker_log_line():
    """The JMESPath expressions (what Promtail's json stage evaluates) against a line as
    Docker's json-file driver wrote it for a compose service (captured from Docker 28 with
    the compose stack's options)."""
    import jmespath

    line = json.loads('{"log":"{\\"level\\": \\"INFO\\", \\"message\\": \\"hi\\"}\\n","stream":"stdout",'
                      '"attrs":{"com.docker.compose.service":"mlflow","tag":"mlops_mlflow_1"},'
                      '"time":"2026-11-30T20:28:48.107244968Z"}')
    (envelope, _) = _stages("json")
    fields = {name: jmespath.search(expression, line) for name, expression in envelope["expressions"].items()}
    assert fields == {"output": '{"level": "INFO", "message": "hi"}\n', "stream": "stdout",
                      "time": "2026-11-30T20:28:48.107244968Z", "service": "mlflow", "container": "mlops_mlflow_1",
                      "autoserve": None, "model": None, "version": None}


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
    expressions = _stages("json")[1]["expressions"]
    assert {source: line[source] for source in expressions.values()} == {
        "level": "ERROR", "logger": "monitoring-test", "message": "deploy failed", "model": "iris",
        "alias": "Production", "version": 3}
