"""``mlops models ...``."""

from __future__ import annotations

import json

import mlops_toolkit as mt
from tests.mlops_toolkit.cli.conftest import assert_one_line_error


def test_models_list(mlops, make_model):
    model = make_model(versions=3)
    mt.set_alias(model, "Production", 2)
    mt.set_alias(model, "challenger", 3)
    lines = mlops("models", "list").stdout.splitlines()
    assert lines[0].split() == ["NAME", "LATEST", "ALIASES"]
    row = next(line for line in lines if line.startswith(model + " "))
    assert row.split(None, 2) == [model, "v3", "Production=v2, challenger=v3"]
    data = json.loads(mlops("models", "list", "--json").stdout)
    assert {"name": model, "latest_version": 3, "aliases": {"Production": 2, "challenger": 3}, "description": ""} in data


def test_models_versions(mlops, make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    lines = mlops("models", "versions", model).stdout.splitlines()
    assert lines[0].split() == ["VERSION", "STATUS", "CREATED", "ALIASES", "RUN"]
    assert [line.split()[:2] for line in lines[1:]] == [["v2", "READY"], ["v1", "READY"]]
    assert "Production" in lines[2] and "Production" not in lines[1]
    data = json.loads(mlops("models", "versions", model, "--json").stdout)
    assert [(v["version"], v["aliases"]) for v in data] == [(2, []), (1, ["Production"])]


def test_models_versions_of_unknown_model(mlops, unique_name):
    missing = unique_name("missing")
    result = mlops("models", "versions", missing)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, f"registered model '{missing}' does not exist")
