"""Listing models and versions."""

from __future__ import annotations

import pytest

import mlops_toolkit as mt


def test_list_models_shows_latest_version_and_aliases(make_model):
    model = make_model(versions=3)
    mt.set_alias(model, "Production", 2)
    summary = next(s for s in mt.list_models() if s.name == model)
    assert summary.latest_version == 3
    assert summary.aliases == {"Production": 2}


def test_list_versions_newest_first_with_aliases(make_model):
    model = make_model(versions=3)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "champion", 1)
    mt.set_alias(model, "challenger", 3)
    versions = mt.list_versions(model)
    assert [v.version for v in versions] == [3, 2, 1]
    assert [v.aliases for v in versions] == [["challenger"], [], ["Production", "champion"]]
    assert all(v.status == "READY" and v.run_id for v in versions)


def test_list_versions_of_unknown_model(unique_name):
    with pytest.raises(mt.NotFoundError, match="does not exist"):
        mt.list_versions(unique_name("missing"))


def test_model_names_with_quotes_and_unicode(make_model):
    model = make_model(versions=2, name="o'brien modèle.v2")
    assert [v.version for v in mt.list_versions(model)] == [2, 1]
    assert mt.set_alias(model, "Production").to_version == 2
