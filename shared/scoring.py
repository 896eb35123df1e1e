"""An option's validation and test errors at a site: one record shape for every arm."""

from __future__ import annotations

import numpy as np

from shared.data import Splits
from shared.metrics import forecast_errors, window_mae
from shared.model import Forecaster
from shared.train import predict


def scores(val_pred: np.ndarray, test_pred: np.ndarray, splits: Splits) -> dict:
    """An option's validation and test errors, with per-window validation MAE for the guard."""
    return {
        "val": forecast_errors(val_pred, splits.val.y, splits.val.mask, splits.val.scale),
        "test": forecast_errors(test_pred, splits.test.y, splits.test.mask, splits.test.scale),
        "val_windows": window_mae(val_pred, splits.val.y, splits.val.mask).tolist(),
    }


def model_scores(model: Forecaster, splits: Splits) -> dict:
    return scores(predict(model, splits.val.x, splits.val.exog), predict(model, splits.test.x, splits.test.exog), splits)
