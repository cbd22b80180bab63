"""``mlops promote``."""

from __future__ import annotations

import json

import mlops_toolkit as mt
from tests.mlops_toolkit.cli.conftest import assert_one_line_error


def test_promote_moves_and_explains(mlops, make_model):
    model = make_model(versions=2, metrics=[{"f1": 0.8}, {"f1": 0.9}])
    mt.set_alias(model, "Production", 1)
    result = mlops("promote", "--model", model, "--metric", "f1", "--alias", "Production", "--min-delta", "0.05")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first.startswith(f"{model}@Production promoted: v2 f1=0.9 vs v1 f1=0.8")
    assert second == f"{model}@Production: v1 -> v2"


def test_promote_keeps_with_lower_is_better_and_json(mlops, make_model):
    model = make_model(versions=2, metrics=[{"loss": 0.30}, {"loss": 0.29}])
    mt.set_alias(model, "Production", 1)
    result = mlops("promote", "-m", model, "--metric", "loss", "--lower-is-better", "--min-delta", "0.05", "--json")
    decision = json.loads(result.stdout)
    assert decision["promoted"] is False and decision["candidate_version"] == 2
    assert "below min_delta" in decision["reason"]
    assert mt.get_alias(model, "Production").version == 1


def test_promote_errors(mlops, make_model):
    model = make_model(versions=1, metrics=[{"f1": 0.8}])
    missing_metric = mlops("promote", "-m", model, "--metric", "auc")
    assert missing_metric.exit_code == 2
    assert_one_line_error(missing_metric.stderr, "metric 'auc'")
    bad_delta = mlops("promote", "-m", model, "--metric", "f1", "--min-delta", "lots")
    assert bad_delta.exit_code == 2 and "'lots' is not a valid float" in bad_delta.stderr
    no_metric = mlops("promote", "-m", model)
    assert no_metric.exit_code == 2 and "Missing option '--metric'" in no_metric.stderr
