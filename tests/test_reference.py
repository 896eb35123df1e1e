"""Tests of simulations.reference: an outside pretrained forecaster (fracast), zero-shot, on the benchmark windows."""

import sys

import numpy as np
import pandas as pd
import pytest

from shared.baselines import seasonal_naive
from shared.data import make_splits, regularize, validate
from simulations import reference

HORIZON = 24


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("fracast")
    return reference.load_model()


def hourly_splits(level: float, seed: int):
    """Splits of one clean daily-seasonal hourly series (a sine with a little noise)."""
    t = np.arange(400)
    y = level + 10 * np.sin(2 * np.pi * t / 24) + 0.5 * np.random.default_rng(seed).standard_normal(len(t))
    frame = pd.DataFrame({"unique_id": f"s{seed}", "ds": pd.date_range("2024-01-01", periods=len(t), freq="h"),
                          "y": y})
    return make_splits(regularize(validate(frame, "test"))[0], lookback=48, horizon=HORIZON, val_size=96,
                       test_size=96, stride=24)


def test_scores_every_site_on_its_windows_and_beats_naive_on_a_seasonal_series(model):
    full = {"a": hourly_splits(50.0, 0), "b": hourly_splits(500.0, 1)}
    out = reference.reference_scores(full, HORIZON)
    assert sorted(out) == ["a", "b"]
    for site, splits in full.items():
        assert len(out[site]["val_windows"]) == len(splits.val)
        for part in ("val", "test"):
            windows = getattr(splits, part)
            naive = np.abs(seasonal_naive(windows.x, HORIZON, 1) - windows.y).mean()
            assert np.isfinite(list(out[site][part].values())).all()
            assert out[site][part]["mae"] < 0.25 * naive, (site, part)  # another quantile than the median is not


def test_median_forecast_is_each_window_alone_across_batches(model):
    x = np.concatenate([hourly_splits(50.0, seed).test.x for seed in range(5)])  # 20 windows: two batches
    assert len(x) > reference.BATCH
    batched = reference.median_forecast(model, x, HORIZON)
    assert batched.shape == (len(x), HORIZON) and np.isfinite(batched).all()
    alone = np.concatenate([reference.median_forecast(model, x[i:i + 1], HORIZON) for i in (0, len(x) - 1)])
    np.testing.assert_allclose(batched[[0, -1]], alone, rtol=1e-5)


def test_a_horizon_other_than_the_windows_is_refused(model):
    with pytest.raises(ValueError, match="site a: its windows have horizon 24, not 12"):
        reference.reference_scores({"a": hourly_splits(50.0, 0)}, 12)


def test_without_fracast_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "fracast", None)  # import fracast now raises ImportError
    with pytest.raises(ImportError, match=r"reference_pretrained arm needs the optional fracast package .*"
                                          r"pip install -e '\.\[reference\]'"):
        reference.reference_scores({}, HORIZON)
