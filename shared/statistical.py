"""Statistical forecasts (Nixtla's statsforecast) on the same validation/test windows as the other arms.

Each series gets one model fitted on its training part; every window is then forecast from the
series' whole history before the window's origin with those fitted parameters (no refit).

References: Hyndman, Koehler, Ord & Snyder (2008), Forecasting with Exponential Smoothing: The State
Space Approach, Springer (ETS); Assimakopoulos & Nikolopoulos (2000), The theta model: a
decomposition approach to forecasting, IJF 16(4); Fiorucci, Pellegrini, Louzada, Petropoulos &
Koehler (2016), Models for optimising the theta method and their relationship to state space
models, IJF 32(4) (AutoTheta); Hyndman & Khandakar (2008), Automatic time series forecasting: the
forecast package for R, JSS 27(3) (AutoARIMA); Garza, Mergenthaler Canseco, Challú & Olivares
(2022), StatsForecast: lightning fast forecasting with statistical and econometric models, PyCon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.data import Windows

STAT_MODELS = ("auto_ets", "auto_theta")  # names used in reports; fast enough for every benchmark
SLOW_MODELS = ("auto_arima",)  # supported, but its fits take seconds to a minute per series


@dataclass(frozen=True)
class StatForecasts:
    """Forecasts of one statistical model, row by row aligned with the windows they were made for."""

    pred: np.ndarray  # [N, horizon] float32
    chosen: dict[str, str]  # unique_id -> form picked on training data, e.g. 'ETS(M,Ad,M)', 'DOTM'
    fallback: tuple[str, ...]  # series fitted with season_length=1: training part under 2 seasons


def frame_n_train(frame: pd.DataFrame, val_size: int, test_size: int) -> dict[str, int]:
    """n_train per unique_id of a regularized frame, as make_splits computes it."""
    sizes = frame.groupby("unique_id", sort=False).size()
    return {str(uid): int(n) - val_size - test_size for uid, n in sizes.items()}


def fit_model(model: str, y_train: np.ndarray, season: int):
    """A statsforecast model (AutoETS, AutoTheta or AutoARIMA) fitted on y_train with season_length=season.

    Raises ValueError for an unknown model name or a training part too short for the model
    (statsforecast needs at least 7 points for AutoETS, 4 for AutoTheta).
    """
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta

    makers = {"auto_ets": AutoETS, "auto_theta": AutoTheta, "auto_arima": AutoARIMA}
    if model not in makers:
        raise ValueError(f"unknown statistical model {model!r}; choose from {STAT_MODELS + SLOW_MODELS}")
    try:
        return makers[model](season_length=season).fit(np.asarray(y_train, dtype=np.float64))
    except NotImplementedError as e:  # statsforecast's "tiny datasets"
        raise ValueError(f"{len(y_train)} training points are too few for {model}: {e}") from e


def _describe(model: str, fitted) -> str:
    """Short name of the form an automatic model selected."""
    from statsforecast.arima import arima_string

    params = fitted.model_
    if model == "auto_ets":  # e.g. 'ETS(A,Ad,N)'
        return str(params.get("method", "constant"))  # statsforecast fits a constant series without a form
    if model == "auto_theta":  # STM, OTM, DSTM or DOTM, and its seasonal decomposition if any
        seasonal = f" ({params['decomposition_type']} seasonal)" if params.get("decompose") else ""
        return str(params["modeltype"]) + seasonal
    return arima_string(params).strip()  # e.g. 'ARIMA(1,0,0)(0,1,1)[7]'


def statistical_predictions(frame: pd.DataFrame, windows: Windows, n_train: dict[str, int], horizon: int,
                            season: int, model: str) -> StatForecasts:
    """Forecasts [len(windows), horizon] of `model` for each window, aligned row by row with `windows`.

    frame: the regularized frame the windows were cut from (columns unique_id, ds, y: filled
    values); n_train: training points per series (frame_n_train); season: seasonal period;
    model: one of STAT_MODELS or SLOW_MODELS.

    For each series the model is fitted once on its first n_train points with
    season_length=season, or with season_length=1 when n_train < 2 * season (statsforecast would
    otherwise drop the seasonality silently or fail); such series are listed in `fallback`.
    Each window is then forecast from all the series' values before its origin with the fitted
    model's `forward` (ETS: fitted smoothing parameters and initial states run over the history;
    Theta: fitted alpha, theta and initial level, but its seasonality test and classical
    decomposition are redone on the history; ARIMA: fitted coefficients). Parameters are thus
    chosen on training data only, as for every other arm.
    """
    if model not in STAT_MODELS + SLOW_MODELS:
        raise ValueError(f"unknown statistical model {model!r}; choose from {STAT_MODELS + SLOW_MODELS}")
    pred = np.full((len(windows), horizon), np.nan, np.float32)
    chosen, fallback = {}, []
    values, ds = frame["y"].to_numpy(np.float64), frame["ds"].to_numpy("datetime64[ns]")
    rows_of = frame.groupby("unique_id", sort=False).indices
    origins = windows.origin.astype("datetime64[ns]")
    for uid in pd.unique(windows.series):
        if uid not in rows_of or uid not in n_train:
            raise ValueError(f"series {uid} of the windows is missing from the frame or from n_train")
        y, stamps, n = values[rows_of[uid]], ds[rows_of[uid]], n_train[uid]
        if not np.isfinite(y).all():
            raise ValueError(f"series {uid} has missing values: pass a regularized (filled) frame")
        idx = np.flatnonzero(windows.series == uid)
        pos = np.searchsorted(stamps, origins[idx])
        bad = (pos >= len(stamps)) | (stamps[np.minimum(pos, len(stamps) - 1)] != origins[idx])
        if bad.any():
            raise ValueError(f"origin {origins[idx][bad][0]} of series {uid} is not a timestamp of the frame")
        used = season if n >= 2 * season else 1
        if used != season:
            fallback.append(str(uid))
        try:
            fitted = fit_model(model, y[:n], used)
        except ValueError as e:
            raise ValueError(f"series {uid}: {e}") from e
        chosen[str(uid)] = _describe(model, fitted)
        for row, t in zip(idx, pos):
            pred[row] = fitted.forward(y=y[:t], h=horizon)["mean"]
    return StatForecasts(pred, chosen, tuple(fallback))
