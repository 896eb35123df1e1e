"""A site with little history: the alone option it can pick, and how the shared model compares with it.

The same comparison serves two sides of the new-site guard (shared.guard.decide_new):
- an established site cuts its own data to a short history before a period of `val_size` points and
  measures the shared forecast against the alone option it would have picked with that little history,
  on the period's windows. The periods are its validation period (which no round trained on) and up to
  PERIODS - 1 earlier ones spread over its series (so one stretch of weather or one season does not
  decide alone; rounds did train on those windows). It reports only counts per history length: trials
  won, trials lost by more than shared.guard.LOSS_MARGIN, trials (`Prior`);
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


PERIODS = 4  # periods per established site and history length (fewer where its series is too short)


@dataclass(frozen=True)
class ShortHistoryEvidence:
    """At one site, period and history length: the shared forecast against the alone option picked with that
    history (per-window MAEs on the period's windows)."""

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


@dataclass(frozen=True)
class ShortHistoryCase:
    """One period of a site's data cut to `history` points before it: its windows and the alone choice's
    errors on them (what does not depend on the shared model, so a simulation can reuse it)."""

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


def period_ends(points: int, history: int, val_size: int, periods: int = PERIODS) -> list[int]:
    """Points left out at the end of a series of `points` for each period (0: the last `val_size` points):
    up to `periods` non-overlapping periods, each with `history` points before it, spread evenly."""
    room = points - history - val_size
    if room < 0:
        return []
    count = min(periods, 1 + room // val_size)
    return [0] if count == 1 else [k * (room // (count - 1)) for k in range(count)]


def short_history_cases(frame: pd.DataFrame, args: ModelArgs, history: int, val_size: int, stride: int, season: int,
                        stat_models: tuple[str, ...], periods: int = PERIODS) -> list[ShortHistoryCase]:
    """A site's cases at `history` points, one per period (period_ends over its shortest series); none when
    its series cannot hold `history` points before a period."""
    points = int(frame.groupby("unique_id").size().min())
    offset = pd.tseries.frequencies.to_offset(frame.attrs["freq"])
    last = frame.groupby("unique_id")["ds"].transform("max")
    cases = []
    for skipped in period_ends(points, history, val_size, periods):
        part = frame[frame["ds"] <= last - skipped * offset].reset_index(drop=True)
        part.attrs = dict(frame.attrs)
        cases.append(short_history_case(part, args, history, val_size, stride, season, stat_models))
    return cases


def tally(evidence: list[ShortHistoryEvidence], margin: float) -> Prior:
    """One site's report at one history length: its trials won (by `margin`), lost, in all."""
    return Prior(sum(e.won(margin) for e in evidence), sum(e.lost() for e in evidence), len(evidence),
                 1 if evidence else 0)
