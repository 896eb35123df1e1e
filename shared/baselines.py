"""Simple forecasts a site can make alone: naive and seasonal naive, chosen on validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data import Splits, Windows
from shared.metrics import forecast_errors


def seasonal_naive(x: np.ndarray, horizon: int, lag: int) -> np.ndarray:
    """Repeat the last `lag` points of each window [N, lookback] over the horizon (lag 1: naive)."""
    if lag > x.shape[1]:
        raise ValueError(f"lag {lag} exceeds the window's {x.shape[1]} points")
    steps = np.arange(horizon)
    return x[:, x.shape[1] - lag + steps % lag]


def errors(windows: Windows, lag: int) -> dict[str, float]:
    return forecast_errors(seasonal_naive(windows.x, windows.y.shape[1], lag), windows.y, windows.mask, windows.scale)


@dataclass(frozen=True)
class SimpleChoice:
    """The simple forecast a site picked on validation, with its validation and test errors."""

    lag: int
    val: dict[str, float]
    test: dict[str, float]

    @property
    def name(self) -> str:
        return "naive" if self.lag == 1 else f"seasonal_naive_{self.lag}"


def best_simple(splits: Splits, lags: tuple[int, ...]) -> SimpleChoice:
    """Naive or seasonal naive, whichever lag has the lowest validation MAE (ties: shortest lag)."""
    scored = sorted((errors(splits.val, lag)["mae"], lag) for lag in lags)
    lag = scored[0][1]
    return SimpleChoice(lag, errors(splits.val, lag), errors(splits.test, lag))
