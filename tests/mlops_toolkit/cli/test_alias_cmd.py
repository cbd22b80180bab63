"""``mlops alias ...`` as a user types it."""

from __future__ import annotations

import json

import pytest

import mlops_toolkit as mt
from tests.mlops_toolkit.cli.conftest import assert_one_line_error


def test_set_as_the_user_types_it(mlops, make_model):
    model = make_model(versions=2)
    result = mlops("alias", "set", "Production", env={"MLOPS_MODEL_NAME": model})
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{model}@Production: none -> v2"


def test_set_with_version_reason_and_unchanged(mlops, make_model):
    model = make_model(versions=2)
    assert mlops("alias", "set", "Production", "--model", model, "--version", "1").stdout.strip().endswith("none -> v1")
    moved = mlops("alias", "set", "Production", "-m", model, "-v", "2", "--reason", "better f1")
    assert moved.stdout.strip() == f"{model}@Production: v1 -> v2"
    again = mlops("alias", "set", "Production", "-m", model, "-v", "2")
    assert again.stdout.strip() == f"{model}@Production: v2 -> v2 (unchanged)"
    assert mt.alias_history(model, "Production")[-1].reason == "better f1"


def test_get(mlops, make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    out = mlops("alias", "get", "Production", "-m", model)
    assert out.exit_code == 0 and out.stdout.startswith(f"{model}@Production: v1 (run ")
    data = json.loads(mlops("alias", "get", "Production", "-m", model, "--json").stdout)
    assert (data["model"], data["alias"], data["version"]) == (model, "Production", 1)


def test_list_table_and_json(mlops, make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "challenger", 2)
    table = mlops("alias", "list", "--model", model).stdout.splitlines()
    assert table[0].split() == ["MODEL", "ALIAS", "VERSION"]
    assert [line.split() for line in table[1:]] == [[model, "Production", "1"], [model, "challenger", "2"]]
    everything = json.loads(mlops("alias", "list", "--json").stdout)
    assert {"model": model, "alias": "challenger", "version": 2, "run_id": None, "source": ""} in everything


def test_delete(mlops, make_model):
    model = make_model(versions=1)
    mt.set_alias(model, "Staging", 1)
    result = mlops("alias", "delete", "Staging", "-m", model)
    assert result.stdout.strip() == f"{model}@Staging: v1 -> none"
    assert mt.list_aliases(model) == []


def test_history_and_rollback_round_trip(mlops, make_model):
    model = make_model(versions=3)
    for version in ("1", "2", "3"):
        mlops("alias", "set", "Production", "-m", model, "-v", version, "-r", f"release {version}")
    rolled = mlops("alias", "rollback", "Production", "-m", model, "--reason", "bad latency")
    assert rolled.exit_code == 0 and rolled.stdout.strip() == f"{model}@Production: v3 -> v2"
    assert mt.get_alias(model, "Production").version == 2

    table = mlops("alias", "history", "Production", "-m", model).stdout.splitlines()
    assert table[0].split()[:5] == ["WHEN", "ACTION", "FROM", "TO", "USER"]
    assert [line.split()[1:4] for line in table[1:]] == [
        ["set", "-", "v1"], ["set", "v1", "v2"], ["set", "v2", "v3"], ["rollback", "v3", "v2"]
    ]
    events = json.loads(mlops("alias", "history", "Production", "-m", model, "--json").stdout)
    assert events[-1]["action"] == "rollback" and events[-1]["reason"] == "bad latency"


def test_history_of_a_fresh_alias(mlops, make_model):
    model = make_model(versions=1)
    assert mlops("alias", "history", "Production", "-m", model).stdout.strip() == "no recorded history"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["alias", "set", "Production", "-m", "{missing}"], "registered model '{missing}' does not exist"),
        (["alias", "set", "Production", "-m", "{model}", "-v", "9"], "has no version 9 (latest is v2)"),
        (["alias", "set", "Production", "-m", "{model}", "-v", "two"], "positive integer"),
        (["alias", "set", "", "-m", "{model}"], "alias must not be empty"),
        (["alias", "set", "Production", "-m", ""], "model name must not be empty"),
        (["alias", "set", "latest", "-m", "{model}"], "'latest' alias name"),
        (["alias", "set", "Production"], "MLOPS_MODEL_NAME"),
        (["alias", "get", "nope", "-m", "{model}"], "has no alias 'nope'"),
        (["alias", "delete", "nope", "-m", "{model}"], "has no alias 'nope'"),
        (["alias", "history", "Production", "-m", "{missing}"], "does not exist"),
        (["alias", "rollback", "Production", "-m", "{model}"], "no earlier version to roll back to"),
        (["alias", "list", "-m", "{missing}"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(mlops, make_model, unique_name, args, fragment):
    names = {"model": make_model(versions=2), "missing": unique_name("missing")}
    result = mlops(*[a.format(**names) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert_one_line_error(result.stderr, fragment.format(**names))


def test_usage_errors_exit_2(mlops):
    result = mlops("alias", "set")
    assert result.exit_code == 2 and "Missing argument 'ALIAS'" in result.stderr
