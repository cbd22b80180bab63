"""Shadows set, listed and cleared in the real registry; bad input is one clear error."""

from __future__ import annotations

import json

import pytest

import mlops_toolkit as mt
from tests.mlops_toolkit.cli.conftest import assert_one_line_error


def test_set_list_and_clear(make_model, mlflow_client):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "challenger", 2)
    shadow = mt.set_shadow(model, "challenger", percent=25)
    assert str(shadow) == f"{model}@challenger shadows {model}@Production (25% of requests, auto)"
    tag = json.loads(mlflow_client.get_registered_model(model).tags["mlops.shadow.Production"])
    assert tag == {"alias": "challenger", "percent": 25.0, "compare": "auto"}
    assert mt.list_shadows(model) == [shadow]
    assert shadow in mt.list_shadows()
    assert mt.clear_shadow(model) == shadow
    assert mt.list_shadows(model) == []
    with pytest.raises(mt.NotFoundError, match="has no shadow"):
        mt.clear_shadow(model)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"alias": "Production"}, mt.ValidationError, "cannot shadow itself"),
    ({"alias": "challenger", "percent": 0}, mt.ValidationError, "above 0"),
    ({"alias": "challenger", "percent": 101}, mt.ValidationError, "at most 100"),
    ({"alias": "challenger", "compare": "vibes"}, mt.ValidationError, "compare must be one of"),
    ({"alias": "nobody"}, mt.NotFoundError, "has no alias 'nobody'"),
])
def test_bad_input_is_refused_before_anything_is_written(make_model, mlflow_client, kwargs, error, match):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "challenger", 2)
    with pytest.raises(error, match=match):
        mt.set_shadow(model, **kwargs)
    assert not any(k.startswith("mlops.shadow.") for k in mlflow_client.get_registered_model(model).tags)


def test_cli_set_list_clear_and_errors(mlops_script, make_model):
    model = make_model(versions=2)
    mt.set_alias(model, "Production", 1)
    mt.set_alias(model, "challenger", 2)
    done = mlops_script("shadow", "set", model, "--alias", "challenger", "--percent", "50")
    assert done.returncode == 0 and done.stdout.strip() == f"{model}@challenger shadows {model}@Production (50% of requests, auto)"
    table = mlops_script("shadow", "list", "--model", model).stdout.splitlines()
    assert table[0].split() == ["MODEL", "OF", "SHADOW", "PERCENT", "COMPARE"]
    assert table[1].split() == [model, "Production", "challenger", "50", "auto"]
    bad = mlops_script("shadow", "set", model, "--alias", "Production")
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "cannot shadow itself")
    cleared = mlops_script("shadow", "clear", model)
    assert cleared.returncode == 0 and cleared.stdout.strip() == f"{model}@Production: shadow challenger cleared"
    again = mlops_script("shadow", "clear", model)
    assert again.returncode == 2
    assert_one_line_error(again.stderr, "has no shadow")
