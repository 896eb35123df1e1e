"""Point-forecast errors over windows, counting only observed target points."""

from __future__ import annotations

import numpy as np

METRICS = ("mae", "rmse", "mase", "smape")


def forecast_errors(pred: np.ndarray, y: np.ndarray, mask: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, MASE and sMAPE of `pred` against `y` [N, H], over points where `mask` is True.

    MASE divides each absolute error by its window's `scale` [N] (the in-sample seasonal-naive
    MAE of the series, computed on its training part); windows with a NaN scale are left out of
    MASE only. sMAPE is in percent (0 to 200), with 0/0 counted as 0.
    """
    if pred.shape != y.shape or mask.shape != y.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, y {y.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("no observed target point to evaluate")
    err = np.abs(pred.astype(np.float64) - y)[mask]
    denom = np.abs(pred.astype(np.float64)) + np.abs(y)
    ratio = np.divide(2.0 * np.abs(pred - y), denom, out=np.zeros_like(denom, dtype=np.float64), where=denom > 0)
    scaled = (np.abs(pred.astype(np.float64) - y) / scale[:, None])[mask & np.isfinite(scale)[:, None]]
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "mase": float(scaled.mean()) if scaled.size else float("nan"),
        "smape": float(100.0 * ratio[mask].mean()),
    }


def window_mae(pred: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MAE of each window [N] over its observed targets (NaN for a window with none)."""
    err = np.where(mask, np.abs(pred.astype(np.float64) - y), 0.0)
    counts = mask.sum(axis=1)
    return np.divide(err.sum(axis=1), counts, out=np.full(len(y), np.nan), where=counts > 0)
