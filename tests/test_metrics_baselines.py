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


def test_errors_agree_with_utilsforecast_per_series():
    """Each series' MAE, RMSE, MASE and sMAPE on its test window as Nixtla's utilsforecast computes them
    (its sMAPE lies in 0..1, ours in percent 0..200; its MASE scales by the training part's seasonal MAE)."""
    import pandas as pd
    from utilsforecast import losses

    from shared.data import make_splits, regularize, validate

    rng = np.random.default_rng(3)
    ds = pd.date_range("2024-01-01", periods=120, freq="h")
    frame = pd.concat([pd.DataFrame({"unique_id": uid, "ds": ds, "y": 10 + 3 * np.sin(np.arange(120) / 3.8)
                                     + rng.normal(0, 1, 120)}) for uid in ("a", "b", "c")], ignore_index=True)
    regular, _ = regularize(validate(frame, "test frame"))
    splits = make_splits(regular, lookback=24, horizon=12, val_size=24, test_size=12, stride=12, season=24)
    test = splits.test
    pred = test.y + rng.normal(0, 2, test.y.shape)
    rows = pd.DataFrame({"unique_id": np.repeat(test.series, 12), "ds": np.concatenate(
        [pd.date_range(o, periods=12, freq="h") for o in test.origin]), "y": test.y.ravel(), "model": pred.ravel()})
    train = frame[frame["ds"] < ds[120 - 36]]
    theirs = {name: f(rows, ["model"]).set_index("unique_id")["model"] for name, f in
              (("mae", losses.mae), ("rmse", losses.rmse), ("smape", losses.smape))}
    theirs["mase"] = losses.mase(rows, ["model"], seasonality=24, train_df=train).set_index("unique_id")["model"]
    for uid in ("a", "b", "c"):
        one = test.series == uid
        ours = forecast_errors(pred[one], test.y[one], test.mask[one], test.scale[one])
        for name in ("mae", "rmse", "mase"):
            assert ours[name] == pytest.approx(theirs[name][uid], rel=1e-5), (uid, name)
        assert ours["smape"] == pytest.approx(200 * theirs["smape"][uid], rel=1e-5), uid
