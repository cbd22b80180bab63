"""Tag values cut to the backend's column width, with a marker saying how much."""

from __future__ import annotations

import pytest

from mlops_toolkit.tags import fit


def test_short_values_are_untouched():
    assert fit("weekly retrain", 5000) == "weekly retrain"


@pytest.mark.parametrize("length, limit", [(5001, 5000), (20_000, 1000), (10**6, 5000), (120, 100)])
def test_long_values_fit_exactly_and_say_how_much_was_cut(length, limit):
    text = "x" * length
    cut = fit(text, limit)
    assert len(cut) == limit
    kept = cut.index("...")
    assert cut.endswith(f"...[cut {length - kept} chars]")


def test_a_limit_smaller_than_the_marker_still_fits():
    assert fit("abcdefghij" * 3, 8) == "abcdefgh"
