"""Tests of shared.statistical: statsforecast forecasts on the windows every arm is scored on."""

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("statsforecast")

from shared.baselines import seasonal_naive  # noqa: E402
from shared.data import make_splits, regularize, validate  # noqa: E402
from shared.statistical import STAT_MODELS, fit_model, frame_n_train, statistical_predictions  # noqa: E402

SEASON = 7
SIZES = {"lookback": 14, "horizon": 7, "val_size": 28, "test_size": 28, "stride": 7}


def daily_frame(series: dict[str, np.ndarray]) -> pd.DataFrame:
    """Regularized daily frame of the given series, built as the pipeline builds it."""
    rows = [pd.DataFrame({"unique_id": uid, "ds": pd.date_range("2024-01-01", periods=len(y), freq="D"), "y": y})
            for uid, y in series.items()]
    frame, _ = regularize(validate(pd.concat(rows, ignore_index=True), "test"))
    return frame


def seasonal(n: int, level: float = 50.0, amplitude: float = 10.0, noise: float = 0.5, seed: int = 0):
    """Weekly sine around level with Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return level + amplitude * np.sin(2 * np.pi * t / SEASON) + noise * rng.standard_normal(n)


def fitted_params(fitted) -> np.ndarray:
    """Fitted parameters of a statsforecast model (an array for ETS, a dict for Theta)."""
    par = fitted.model_["par"]
    return np.array(list(par.values()) if isinstance(par, dict) else par, dtype=float)


def splits_of(frame, **sizes):
    sizes = {**SIZES, **sizes}
    return make_splits(frame, sizes["lookback"], sizes["horizon"], sizes["val_size"], sizes["test_size"],
                       sizes["stride"], SEASON)


def predict(frame, windows, model, val_size=SIZES["val_size"], test_size=SIZES["test_size"], horizon=7):
    n_train = frame_n_train(frame, val_size, test_size)
    return statistical_predictions(frame, windows, n_train, horizon, SEASON, model)


def test_frame_n_train_matches_make_splits():
    frame = daily_frame({"a": seasonal(140), "b": seasonal(100, seed=1)})
    val = splits_of(frame).val
    n_train = frame_n_train(frame, SIZES["val_size"], SIZES["test_size"])
    assert n_train == {"a": 140 - 56, "b": 100 - 56}
    for uid, n in n_train.items():
        first_origin = val.origin[val.series == uid].min()
        assert first_origin == frame.loc[frame.unique_id == uid, "ds"].iloc[n]


@pytest.mark.parametrize("model", STAT_MODELS)
def test_rows_follow_windows(model):
    # Prepare: two series of very different levels
    frame = daily_frame({"low": seasonal(140, level=10, amplitude=1, noise=0.05),
                         "high": seasonal(140, level=1000, amplitude=100, noise=5, seed=1)})
    test = splits_of(frame).test
    # Execute
    out = predict(frame, test, model)
    # Assert: each row is near its own series' level, and a permutation of windows permutes the rows
    assert out.pred.shape == (len(test), 7)
    level = np.where(test.series == "low", 10.0, 1000.0)
    np.testing.assert_allclose(out.pred.mean(axis=1), level, rtol=0.05)
    perm = np.random.default_rng(0).permutation(len(test))
    np.testing.assert_array_equal(predict(frame, test.subset(perm), model).pred, out.pred[perm])
    assert set(out.chosen) == {"low", "high"} and out.fallback == ()


@pytest.mark.parametrize("model", STAT_MODELS)
def test_seasonal_sine_beats_naive(model):
    frame = daily_frame({"a": seasonal(200), "b": seasonal(200, level=80, seed=1)})
    test = splits_of(frame).test
    pred = predict(frame, test, model).pred
    mae = np.abs(pred - test.y).mean()
    naive = np.abs(seasonal_naive(test.x, 7, 1) - test.y).mean()
    snaive = np.abs(seasonal_naive(test.x, 7, SEASON) - test.y).mean()
    assert mae < 0.1 * naive
    assert mae < 1.2 * snaive


@pytest.mark.parametrize("model", STAT_MODELS)
def test_no_look_ahead(model):
    # Prepare: one series; its windows from the first validation origin to the last test origin
    y = seasonal(140)
    frame = daily_frame({"a": y})
    splits = splits_of(frame)
    windows = splits.val.concat([splits.val, splits.test], 14, 7)
    n = frame_n_train(frame, 28, 28)["a"]
    base = predict(frame, windows, model).pred
    t = n + 35  # origin of the 6th window
    # Execute: change every value from t on
    changed = y.copy()
    changed[t:] += 100.0
    after = predict(daily_frame({"a": changed}), windows, model).pred
    # Assert: windows with origin <= t are unchanged, later ones move
    positions = np.searchsorted(frame["ds"].to_numpy(), windows.origin)
    np.testing.assert_array_equal(after[positions <= t], base[positions <= t])
    assert not np.allclose(after[positions > t], base[positions > t])
    # the first window is the fitted model's own forecast: forward applies it without refitting
    fitted = fit_model(model, y[:n], SEASON)
    np.testing.assert_allclose(base[0], fitted.predict(h=7)["mean"], rtol=1e-5)
    # and the later windows use the model fitted on the unchanged training part
    np.testing.assert_allclose(after[-1], fitted.forward(y=changed[: positions[-1]], h=7)["mean"], rtol=1e-5)


@pytest.mark.parametrize("model", STAT_MODELS)
def test_training_values_change_the_fit(model):
    y = seasonal(140)
    changed = y.copy()
    changed[20:30] += 8.0
    frame, frame_changed = daily_frame({"a": y}), daily_frame({"a": changed})
    val = splits_of(frame).val
    n = frame_n_train(frame, 28, 28)["a"]
    before = fitted_params(fit_model(model, y[:n], SEASON))
    after = fitted_params(fit_model(model, changed[:n], SEASON))
    assert not np.allclose(before, after, equal_nan=True)
    assert not np.allclose(predict(frame, val, model).pred[0], predict(frame_changed, val, model).pred[0])


@pytest.mark.parametrize("model", STAT_MODELS)
def test_short_training_part_falls_back_to_no_season(model):
    # Prepare: n_train 10 < 2 seasons for "short", 112 for "long"
    sizes = {"lookback": 3, "horizon": 7, "val_size": 14, "test_size": 14}
    y_short = seasonal(38, seed=1)
    frame = daily_frame({"long": seasonal(140), "short": y_short})
    test = splits_of(frame, **sizes).test
    # Execute
    out = predict(frame, test, model, val_size=14, test_size=14)
    # Assert: recorded, finite, and the short series' forecast is the non-seasonal model's
    assert out.fallback == ("short",)
    assert np.isfinite(out.pred).all()
    rows = np.flatnonzero(test.series == "short")
    first = np.searchsorted(frame.loc[frame.unique_id == "short", "ds"].to_numpy(), test.origin[rows[0]])
    expected = fit_model(model, y_short[:10], 1).forward(y=y_short[:first], h=7)["mean"]
    np.testing.assert_allclose(out.pred[rows[0]], expected, rtol=1e-5)


def test_too_short_to_fit_names_the_series():
    frame = daily_frame({"long": seasonal(140), "tiny": seasonal(30, seed=1)})
    test = splits_of(frame, lookback=2, horizon=2, val_size=12, test_size=12).test
    with pytest.raises(ValueError, match="series tiny: 6 training points are too few for auto_ets"):
        predict(frame, test, "auto_ets", val_size=12, test_size=12, horizon=2)


def test_bad_inputs():
    frame = daily_frame({"a": seasonal(140)})
    test = splits_of(frame).test
    with pytest.raises(ValueError, match="unknown statistical model"):
        predict(frame, test, "prophet")
    other = daily_frame({"a": seasonal(130)})  # same series, 10 points shorter: last origins absent
    with pytest.raises(ValueError, match="is not a timestamp of the frame"):
        predict(other, test, "auto_theta")
    with pytest.raises(ValueError, match="series a of the windows is missing"):
        statistical_predictions(frame, test, {}, 7, SEASON, "auto_theta")


def test_auto_arima_runs():
    frame = daily_frame({"a": seasonal(100)})
    test = splits_of(frame).test
    out = predict(frame, test, "auto_arima")
    assert out.pred.shape == (len(test), 7) and np.isfinite(out.pred).all()
    assert out.chosen["a"].startswith("ARIMA(")
