"""An outside pretrained forecaster, zero-shot, as a reference arm: fracast's Fracast-0 (85,001 parameters,
Apache-2.0, weights inside the wheel), whose pretraining corpora may include the benchmark data sets.

References: Fracast-0, https://github.com/ztxtech/fracast-0
"""

from __future__ import annotations

import importlib.util

import numpy as np

from shared.data import Splits
from shared.scoring import scores

ARM = "reference_pretrained"
CAVEAT = ("an outside model (fracast 0.1.0, Apache-2.0), zero-shot; its pretraining corpora (LOTSA, the Chronos "
          "and fev data sets) may include the benchmark's data (NN5, Beijing air quality)")
INSTALL = "pip install -e '.[reference]'"
BATCH = 16  # windows per forward pass: the model pads every window to its 2,048-point context


def available() -> bool:
    """Whether fracast can be imported (the optional group `reference` is installed)."""
    return importlib.util.find_spec("fracast") is not None


def load_model():
    """fracast's pretrained model (its bundled int8 weights, read offline); ImportError saying how to install it."""
    try:
        from fracast import FracastModel
    except ImportError as e:
        raise ImportError(f"the {ARM} arm needs the optional fracast package ({e}): {INSTALL}") from e
    return FracastModel.from_pretrained()


def median_forecast(model, x: np.ndarray, horizon: int) -> np.ndarray:
    """The model's median forecast [N, horizon] of windows x [N, lookback], each window's series alone."""
    median = model.quantiles.index(0.5)
    out = np.empty((len(x), horizon), np.float32)
    for start in range(0, len(x), BATCH):
        out[start:start + BATCH] = model.forecast(x[start:start + BATCH], horizon=horizon)[:, :, median]
    return out


def reference_scores(full: dict[str, Splits], horizon: int) -> dict[str, dict]:
    """Each site's scores (shared.scoring.scores) of the model's zero-shot median on its validation and test
    windows, from each window's lookback `x` alone."""
    model = load_model()
    out = {}
    for site, splits in full.items():
        if splits.val.y.shape[1] != horizon:
            raise ValueError(f"site {site}: its windows have horizon {splits.val.y.shape[1]}, not {horizon}")
        out[site] = scores(median_forecast(model, splits.val.x, horizon),
                           median_forecast(model, splits.test.x, horizon), splits)
    return out
