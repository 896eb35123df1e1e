"""Simple forecasts a site can make alone: naive and seasonal naive."""

from __future__ import annotations

import numpy as np



def seasonal_naive(x: np.ndarray, horizon: int, lag: int) -> np.ndarray:
    """Repeat the last `lag` points of each window [N, lookback] over the horizon (lag 1: naive)."""
    if lag > x.shape[1]:
        raise ValueError(f"lag {lag} exceeds the window's {x.shape[1]} points")
    steps = np.arange(horizon)
    return x[:, x.shape[1] - lag + steps % lag]


def simple_name(lag: int) -> str:
    """Report name of the simple forecast with this lag."""
    return "naive" if lag == 1 else f"seasonal_naive_{lag}"
