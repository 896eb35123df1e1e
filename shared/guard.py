"""The negative-transfer guard: a site serves the federated model only on robust validation evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GuardDecision:
    """What a site serves, with the validation figures behind the choice."""

    serve: str  # "federated" or "alone_best"
    val_mae_federated: float
    val_mae_alone: float
    val_win_share: float  # share of validation windows where the federated forecast erred less
    windows: int
    margin: float

    def to_dict(self) -> dict:
        return asdict(self)


def decide(federated: np.ndarray, alone: np.ndarray, margin: float = 0.02, min_win_share: float = 0.5,
           min_windows: int = 4) -> GuardDecision:
    """Serve the federated model only if, over the validation windows (per-window MAEs, aligned),

    - its mean MAE is at least `margin` below the alone option's (not a tie won by noise),
    - it wins in at least `min_win_share` of the windows (not one lucky window carrying the mean),
    - there are at least `min_windows` windows to judge from.
    Otherwise the site keeps the best it can do alone.
    """
    federated, alone = np.asarray(federated, float), np.asarray(alone, float)
    if federated.shape != alone.shape:
        raise ValueError(f"validation errors differ in shape: {federated.shape} vs {alone.shape}")
    fed_mae, alone_mae = float(federated.mean()), float(alone.mean())
    win_share = float((federated < alone).mean()) if len(federated) else 0.0
    better = fed_mae <= (1.0 - margin) * alone_mae and win_share >= min_win_share
    serve = "federated" if better and len(federated) >= min_windows else "alone_best"
    return GuardDecision(serve, fed_mae, alone_mae, win_share, len(federated), margin)
