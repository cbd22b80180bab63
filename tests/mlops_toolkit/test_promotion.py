"""The champion/challenger gate."""

from __future__ import annotations

import pytest

import mlops_toolkit as mt


def test_free_alias_goes_to_the_best_version(make_model):
    model = make_model(versions=3, metrics=[{"f1": 0.80}, {"f1": 0.92}, {"f1": 0.85}])
    decision = mt.promote_best(model, metric="f1", alias="Production")
    assert decision.promoted and decision.candidate_version == 2
    assert "takes the free alias" in decision.reason
    assert mt.get_alias(model, "Production").version == 2


def test_clear_winner_replaces_the_champion_and_is_recorded(make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.80}, {"f1": 0.90}])
    mt.set_alias(model, "Production", 1)
    decision = mt.promote_best(model, metric="f1", alias="Production", min_delta=0.05)
    assert decision.promoted
    assert (decision.current_version, decision.current_value, decision.candidate_value) == (1, 0.80, 0.90)
    assert str(decision.change) == f"{model}@Production: v1 -> v2"
    last = mt.alias_history(model, "Production")[-1]
    assert last.reason.startswith("promote_best:") and "better by 0.1" in last.reason


def test_small_gain_keeps_the_champion(make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.90}, {"f1": 0.905}])
    mt.set_alias(model, "Production", 1)
    decision = mt.promote_best(model, metric="f1", alias="Production", min_delta=0.01)
    assert not decision.promoted and decision.change is None
    assert "below min_delta 0.01" in decision.reason
    # The sentence says which version holds the alias and which candidate lost.
    assert str(decision) == (f"{model}@Production stays on v1: v1 (f1=0.9) stays; best candidate v2 (f1=0.905) "
                             "gains 0.005, below min_delta 0.01")
    assert mt.get_alias(model, "Production").version == 1


def test_lower_is_better(make_model):
    model = make_model(versions=3, metrics=[{"rmse": 3.0}, {"rmse": 1.5}, {"rmse": 2.0}])
    mt.set_alias(model, "Production", 1)
    decision = mt.promote_best(model, metric="rmse", alias="Production", higher_is_better=False)
    assert decision.promoted and decision.candidate_version == 2


def test_champion_already_best(make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.95}, {"f1": 0.90}])
    mt.set_alias(model, "Production", 1)
    decision = mt.promote_best(model, metric="f1", alias="Production")
    assert not decision.promoted and "already holds it" in decision.reason


def test_tie_keeps_the_champion(make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.9}, {"f1": 0.9}])
    mt.set_alias(model, "Production", 1)
    assert not mt.promote_best(model, metric="f1", alias="Production").promoted


def test_champion_without_the_metric_is_replaced(make_model):
    model = make_model(versions=2, metrics=[{}, {"f1": 0.7}])
    mt.set_alias(model, "Production", 1)
    decision = mt.promote_best(model, metric="f1", alias="Production", min_delta=0.5)
    assert decision.promoted and "has no f1" in decision.reason


def test_dry_run_moves_nothing(make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.5}, {"f1": 0.9}])
    mt.set_alias(model, "Production", 1)
    decision = mt.promote_best(model, metric="f1", alias="Production", dry_run=True)
    assert not decision.promoted and decision.reason.startswith("dry run, would promote")
    assert mt.get_alias(model, "Production").version == 1


def test_metric_nobody_logged(make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.5}, {"f1": 0.9}])
    with pytest.raises(mt.ValidationError, match="logged metric 'auc'"):
        mt.promote_best(model, metric="auc")


def test_negative_min_delta_is_rejected(make_model):
    model = make_model(versions=1, metrics=[{"f1": 0.5}])
    with pytest.raises(mt.ValidationError, match="min_delta"):
        mt.promote_best(model, metric="f1", min_delta=-1)


def test_unknown_model(unique_name):
    with pytest.raises(mt.NotFoundError):
        mt.promote_best(unique_name("missing"), metric="f1")
