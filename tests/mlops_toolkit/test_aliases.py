"""Alias operations against the real registry, including durable history and rollback."""

from __future__ import annotations

import json

import pytest

import mlops_toolkit as mt
from mlops_toolkit import aliases


def test_set_defaults_to_latest_version(make_model):
    model = make_model(versions=3)
    change = mt.set_alias(model, "Production")
    assert (change.from_version, change.to_version, change.action) == (None, 3, "set")
    assert str(change) == f"{model}@Production: none -> v3"
    assert mt.get_alias(model, "Production").version == 3


def test_set_explicit_version_then_move(make_model):
    model = make_model(versions=3)
    mt.set_alias(model, "Production", 1)
    change = mt.set_alias(model, "Production", "2")
    assert str(change) == f"{model}@Production: v1 -> v2"
    assert mt.get_alias(model, "Production").version == 2


def test_set_same_version_is_unchanged_and_not_recorded(make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 2)
    change = mt.set_alias(model, "Production", 2)
    assert change.action == "unchanged"
    assert len(mt.alias_history(model, "Production")) == 1


def test_model_defaults_to_configured_model_name(make_model):
    model = make_model(versions=2)
    mt.configure(model_name=model)
    assert mt.set_alias(None, "champion").to_version == 2


def test_get_returns_run_of_the_version(make_model, mlflow_client):
    model = make_model(versions=2)
    mt.set_alias(model, "Staging", 1)
    target = mt.get_alias(model, "Staging")
    assert target.run_id == mlflow_client.get_model_version(model, "1").run_id


def test_list_one_model_and_all_models(make_model):
    first, second = make_model(versions=2), make_model(versions=1)
    mt.set_alias(first, "Production", 1)
    mt.set_alias(first, "challenger", 2)
    mt.set_alias(second, "Production", 1)
    mine = [(t.alias, t.version) for t in mt.list_aliases(first)]
    assert mine == [("Production", 1), ("challenger", 2)]
    everything = {(t.model, t.alias) for t in mt.list_aliases()}
    assert {(first, "Production"), (first, "challenger"), (second, "Production")} <= everything


def test_delete_removes_alias_and_records_it(make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 2)
    change = mt.delete_alias(model, "Production", reason="retired")
    assert (change.from_version, change.to_version) == (2, None)
    assert mt.list_aliases(model) == []
    last = mt.alias_history(model, "Production")[-1]
    assert (last.action, last.from_version, last.reason) == ("delete", 2, "retired")


def test_history_records_who_when_and_why(make_model, monkeypatch):
    model = make_model(versions=2)
    monkeypatch.setenv("MLOPS_USER", "alice")
    mt.set_alias(model, "Production", 1, reason="first release")
    mt.set_alias(model, "Production", 2)
    events = mt.alias_history(model, "Production")
    assert [(e.action, e.from_version, e.to_version) for e in events] == [("set", None, 1), ("set", 1, 2)]
    assert events[0].user == "alice" and events[0].reason == "first release"
    assert events[0].timestamp < events[1].timestamp


def test_history_is_stored_in_the_registry_for_everyone(make_model, mlflow_client):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "Production", 2)
    # Any other client (another notebook, the CLI, the watcher) reads the same record:
    # one small JSON tag per event, keys sortable by time.
    tags = mlflow_client.get_registered_model(model).tags
    keys = sorted(k for k in tags if k.startswith("mlops.alias_event.Production."))
    events = [json.loads(tags[k]) for k in keys]
    assert [(e["from_version"], e["to_version"], e["alias"]) for e in events] == [
        (None, 1, "Production"), (1, 2, "Production")]


def test_history_is_bounded(make_model, monkeypatch):
    model = make_model(versions=2)
    monkeypatch.setattr(aliases, "HISTORY_LIMIT", 3)
    for version in (1, 2, 1, 2, 1):
        mt.set_alias(model, "Production", version)
    events = mt.alias_history(model, "Production")
    assert len(events) == 3
    assert [e.to_version for e in events] == [1, 2, 1]


def test_rollback_steps_back_through_history(make_model):
    model = make_model(versions=3)
    for version in (1, 2, 3):
        mt.set_alias(model, "Production", version)
    assert str(mt.rollback_alias(model, "Production")) == f"{model}@Production: v3 -> v2"
    assert str(mt.rollback_alias(model, "Production")) == f"{model}@Production: v2 -> v1"
    assert mt.get_alias(model, "Production").version == 1
    with pytest.raises(mt.ValidationError, match="no earlier version"):
        mt.rollback_alias(model, "Production")
    actions = [e.action for e in mt.alias_history(model, "Production")]
    assert actions == ["set", "set", "set", "rollback", "rollback"]


def test_rollback_restores_a_deleted_alias(make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 2)
    mt.delete_alias(model, "Production")
    change = mt.rollback_alias(model, "Production")
    assert (change.from_version, change.to_version) == (None, 2)
    assert mt.get_alias(model, "Production").version == 2


def test_rollback_without_history_is_a_clear_error(make_model):
    model = make_model(versions=1)
    with pytest.raises(mt.ValidationError, match=f"{model}@Production has no earlier version"):
        mt.rollback_alias(model, "Production")


def test_unknown_model(unique_name):
    missing = unique_name("missing")
    with pytest.raises(mt.NotFoundError, match=f"registered model '{missing}' does not exist"):
        mt.set_alias(missing, "Production")


def test_unknown_version_names_the_latest(make_model):
    model = make_model(versions=2)
    with pytest.raises(mt.NotFoundError, match=f"model '{model}' has no version 7 \\(latest is v2\\)"):
        mt.set_alias(model, "Production", 7)


def test_version_of_another_model_is_rejected(make_model):
    big, small = make_model(versions=3), make_model(versions=1)
    with pytest.raises(mt.NotFoundError, match="has no version 3"):
        mt.set_alias(small, "Production", 3)
    assert mt.list_aliases(small) == [] and mt.list_aliases(big) == []


def test_unknown_alias(make_model):
    model = make_model(versions=1)
    mt.set_alias(model, "Production", 1)
    with pytest.raises(mt.NotFoundError, match="has no alias 'Staging' \\(aliases: Production\\)"):
        mt.get_alias(model, "Staging")
    with pytest.raises(mt.NotFoundError):
        mt.delete_alias(model, "Staging")


@pytest.mark.parametrize("model, alias", [("", "Production"), ("  ", "Production"), ("x", ""), ("x", " ")])
def test_empty_names_are_rejected_before_any_request(model, alias):
    with pytest.raises(mt.ValidationError, match="must not be empty"):
        mt.set_alias(model, alias)


def test_missing_model_name_says_how_to_set_it():
    with pytest.raises(mt.ValidationError, match="MLOPS_MODEL_NAME"):
        mt.set_alias(None, "Production")


@pytest.mark.parametrize("version", ["0", "-1", "abc", "1.5"])
def test_bad_version_strings(make_model, version):
    model = make_model(versions=1)
    with pytest.raises(mt.ValidationError, match="positive integer"):
        mt.set_alias(model, "Production", version)


@pytest.mark.parametrize("alias", ["latest", "v3", "bad alias!"])
def test_reserved_or_invalid_alias_names(make_model, alias):
    model = make_model(versions=1)
    with pytest.raises(mt.ValidationError):
        mt.set_alias(model, alias, 1)
    assert mt.list_aliases(model) == []


def test_model_without_versions(mlflow_client, unique_name):
    name = unique_name("empty")
    mlflow_client.create_registered_model(name)
    with pytest.raises(mt.NotFoundError, match="has no versions yet"):
        mt.set_alias(name, "Production")
