"""Drift detection on data with and without a shift, and the push to a real Pushgateway."""

from __future__ import annotations

import urllib.request

import numpy as np
import pandas as pd
import pytest

from mlops_toolkit.batch import drift
from mlops_toolkit.errors import ValidationError


def _frame(seed: int, shift: float = 0.0, rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(0 + shift, 1, rows), "b": rng.normal(5, 2, rows)})


def test_same_distribution_is_not_drift():
    report = drift.detect_drift(_frame(1), _frame(2))
    assert not report.drift_detected
    assert all(f.p_value > report.alpha for f in report.features)


def test_shifted_feature_is_drift_and_named():
    report = drift.detect_drift(_frame(1), _frame(2, shift=1.0))
    assert report.drift_detected and report.drifted_features == ["a"]
    by_name = {f.feature: f for f in report.features}
    assert by_name["a"].statistic > 0.3 and by_name["a"].p_value < 1e-6
    assert not by_name["b"].drifted


def test_data_hash_ignores_row_and_column_order():
    frame = _frame(3)
    shuffled = frame.sample(frac=1.0, random_state=0)[["b", "a"]]
    assert drift.data_hash(frame) == drift.data_hash(shuffled)
    assert drift.data_hash(frame) != drift.data_hash(_frame(4))


def test_empty_current_data_is_a_clear_error():
    with pytest.raises(ValidationError, match="no recent input rows"):
        drift.detect_drift(_frame(1), pd.DataFrame())


def test_push_to_a_real_pushgateway(pushgateway, unique_name):
    model = unique_name("drift")
    text = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert "model_drift_detected{" not in text  # a fresh gateway: what follows was pushed now
    report = drift.detect_drift(_frame(1), _frame(2, shift=1.0))
    drift.push_to_gateway(report, model, pushgateway, prediction_rows=30)
    text = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    assert f'model_drift_detected{{instance="",job="model_monitoring",model="{model}",source="batch"}} 1' in text
    assert f'batch_predictions_rows{{instance="",job="model_monitoring",model="{model}",source="batch"}} 30' in text
    drift.push_to_gateway(drift.detect_drift(_frame(1), _frame(2)), model, pushgateway, source="live")
    text = urllib.request.urlopen(pushgateway + "/metrics", timeout=5).read().decode()
    # each source is its own group: the live push did not erase the batch figures
    assert f'model_drift_detected{{instance="",job="model_monitoring",model="{model}",source="batch"}} 1' in text
    assert f'model_drift_detected{{instance="",job="model_monitoring",model="{model}",source="live"}} 0' in text
    ks_line = next(line for line in text.splitlines() if line.startswith("model_drift_ks_statistic") and 'feature="a"' in line)
    assert float(ks_line.rsplit(" ", 1)[1]) == pytest.approx(report.features[0].statistic)
    assert "model_drift_p_value{" in text
