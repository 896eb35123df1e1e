"""A site with little history: the alone option it can pick, and how the shared model compares with it.

The same comparison serves two sides of the new-site guard (shared.guard.decide_new):
- an established site cuts its own history to a short length, before its validation period, and
  measures the shared forecast against the alone option it would have picked with that little
  history, on its validation windows (which no round trained on); it reports only whether the
  shared forecast won and whether it lost by more than shared.guard.LOSS_MARGIN, per history
  length (`ShortHistoryEvidence.report`);
- a new site measures the same on its own validation windows, once its history holds some.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.baselines import seasonal_naive, simple_name
from shared.data import Windows, make_splits
from shared.guard import LOSS_MARGIN, Prior
from shared.metrics import window_mae
from shared.model import Forecaster, ModelArgs
from shared.statistical import fit_model, statistical_predictions
from shared.train import predict


def own_val_size(history: int, lookback: int, horizon: int, stride: int, val_size: int) -> int:
    """Validation points a new site keeps from its own history: up to `val_size`, leaving a lookback
    before them and holding at least one horizon (0: it has too little for any)."""
    room = min(val_size, history - lookback)
    return room - (room - horizon) % stride if room >= horizon else 0


def pick_alone(frame: pd.DataFrame, horizon: int, lags: tuple[int, ...], season: int, stat_models: tuple[str, ...]
               ) -> str:
    """The alone option a site picks on its last `horizon` points, each option made from the points
    before them (simple forecasts, and statistical models fitted on them): lowest MAE over its series.
    An option its history is too short for is not in the running; naive always is."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    groups = frame.groupby("unique_id", sort=True)
    for _, rows in groups:
        y = rows["y"].to_numpy(np.float64)
        past, future = y[:-horizon], y[-horizon:]
        options = {simple_name(lag): seasonal_naive(past[None, -lag:], horizon, lag)[0]
                   for lag in lags if len(past) >= lag}
        for stat in stat_models:
            try:
                fitted = fit_model(stat, past, season if len(past) >= 2 * season else 1)
            except ValueError:  # too few points for this model
                continue
            options[stat] = np.asarray(fitted.predict(h=horizon)["mean"])
        for name, forecast in options.items():
            totals[name] = totals.get(name, 0.0) + float(np.abs(forecast - future).mean())
            counts[name] = counts.get(name, 0) + 1
    usable = [name for name in totals if counts[name] == groups.ngroups]  # made for every series
    return min(usable, key=lambda name: (totals[name], name))


def alone_predictions(frame: pd.DataFrame, windows: Windows, n_history: int, horizon: int, lags: tuple[int, ...],
                      season: int, stat_models: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each alone option's forecasts of `windows`: simple forecasts of each window's inputs, and the
    statistical models fitted once per series on its first `n_history` points (then run forward)."""
    out = {simple_name(lag): seasonal_naive(windows.x, horizon, lag) for lag in lags}
    n_train = {str(uid): n_history for uid in frame["unique_id"].unique()}
    for stat in stat_models:
        out[stat] = statistical_predictions(frame, windows, n_train, horizon, season, stat).pred
    return out


@dataclass(frozen=True)
class ShortHistoryEvidence:
    """At one site and history length: the shared forecast against the alone option picked with that history
    (per-window MAEs on the validation windows)."""

    history: int
    alone_choice: str
    shared_mae: np.ndarray
    alone_mae: np.ndarray

    def won(self, margin: float) -> bool:
        """Whether the shared forecast's mean MAE is at least `margin` below the alone choice's."""
        return bool(len(self.shared_mae)) and self.shared_mae.mean() <= (1 - margin) * self.alone_mae.mean()

    def lost(self, margin: float = LOSS_MARGIN) -> bool:
        """Whether the shared forecast's mean MAE is above the alone choice's by more than `margin`."""
        return bool(len(self.shared_mae)) and self.shared_mae.mean() > (1 + margin) * self.alone_mae.mean()

    def report(self, margin: float) -> Prior:
        """What an established site reports of it: won (by `margin`), lost, of one site."""
        return Prior(int(self.won(margin)), int(self.lost()), 1)


@dataclass(frozen=True)
class ShortHistoryCase:
    """A site's validation windows with its history cut to `history` points before them, and the alone
    choice's errors there: what does not depend on the shared model (a simulation reuses it)."""

    history: int
    alone_choice: str
    windows: Windows
    alone_mae: np.ndarray

    def judge(self, model: Forecaster) -> ShortHistoryEvidence:
        shared = predict(model, self.windows.x, self.windows.exog, head=False)
        return ShortHistoryEvidence(self.history, self.alone_choice,
                                    window_mae(shared, self.windows.y, self.windows.mask), self.alone_mae)


def short_history_case(frame: pd.DataFrame, args: ModelArgs, history: int, val_size: int, stride: int, season: int,
                       stat_models: tuple[str, ...]) -> ShortHistoryCase:
    """The case on the last `val_size` points of a site's regularised frame, the site keeping only the
    `history` points before them (history >= the model's lookback)."""
    end = frame.groupby("unique_id")["ds"].transform("max")
    offset = pd.tseries.frequencies.to_offset(frame.attrs["freq"])
    part = frame[frame["ds"] > end - (history + val_size) * offset].reset_index(drop=True)
    part.attrs = dict(frame.attrs)
    val = make_splits(part, args.lookback, args.horizon, val_size, 0, stride, covariates=args.futr_exog,
                      joining=True).val
    hist = part.groupby("unique_id", sort=True).head(history)
    choice = pick_alone(hist, args.horizon, args.lags, season, stat_models)
    alone = alone_predictions(part, val, history, args.horizon, args.lags, season,
                              tuple(s for s in stat_models if s == choice))[choice]
    return ShortHistoryCase(history, choice, val, window_mae(alone, val.y, val.mask))


def short_history_evidence(frame: pd.DataFrame, model: Forecaster, history: int, val_size: int, stride: int,
                           season: int, stat_models: tuple[str, ...]) -> ShortHistoryEvidence:
    """The shared forecast against the alone choice on the last `val_size` points of a site's regularised
    frame, the site keeping only the `history` points before them."""
    return short_history_case(frame, model.args, history, val_size, stride, season, stat_models).judge(model)
