"""``mlops doctor``."""

from __future__ import annotations

import json

from mlops_toolkit.ops.processes import free_port


def test_doctor_table_exit_0(mlops):
    result = mlops("doctor")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0] + " " + line.split()[1]: line.split()[2] for line in result.stdout.splitlines()[1:]}
    assert rows["tracking server"] == rows["model registry"] == rows["artifact store"] == "ok"
    assert rows["docker engine"] in ("ok", "warn")


def test_doctor_json_and_dead_server_exit_1(mlops):
    result = mlops("doctor", "--json", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["tracking server"]["ok"] is False and "cannot reach" in checks["tracking server"]["detail"]
