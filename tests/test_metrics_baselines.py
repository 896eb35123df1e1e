"""Metrics and simple baselines against hand-computed values."""

import numpy as np
import pytest

from shared.baselines import seasonal_naive, simple_name
from shared.metrics import forecast_errors


def test_errors_by_hand():
    pred = np.array([[1.0, 2.0], [3.0, 0.0]])
    y = np.array([[2.0, 2.0], [1.0, 0.0]])
    mask = np.array([[True, True], [True, False]])  # the last point was never observed
    scale = np.array([0.5, 2.0])
    out = forecast_errors(pred, y, mask, scale)
    # observed errors 1, 0, 2
    assert out["mae"] == pytest.approx(1.0)
    assert out["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert out["mase"] == pytest.approx((1 / 0.5 + 0 / 0.5 + 2 / 2.0) / 3)
    assert out["smape"] == pytest.approx(100 * (2 * 1 / 3 + 0 + 2 * 2 / 4) / 3)


def test_nan_scale_leaves_window_out_of_mase_only():
    pred, y = np.array([[1.0], [5.0]]), np.array([[0.0], [1.0]])
    out = forecast_errors(pred, y, np.ones((2, 1), bool), np.array([1.0, np.nan]))
    assert out["mase"] == pytest.approx(1.0) and out["mae"] == pytest.approx(2.5)


def test_zero_over_zero_smape_is_zero():
    out = forecast_errors(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2), bool), np.ones(1))
    assert out["smape"] == 0.0


def test_no_observed_target_is_an_error():
    with pytest.raises(ValueError, match="no observed"):
        forecast_errors(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2), bool), np.ones(1))


def test_seasonal_naive_by_hand():
    x = np.array([[1, 2, 3, 4, 5, 6]], dtype=float)
    assert seasonal_naive(x, 4, 1).tolist() == [[6, 6, 6, 6]]
    assert seasonal_naive(x, 5, 3).tolist() == [[4, 5, 6, 4, 5]]
    with pytest.raises(ValueError, match="exceeds"):
        seasonal_naive(x, 2, 7)


def test_simple_names():
    assert simple_name(1) == "naive" and simple_name(24) == "seasonal_naive_24"
