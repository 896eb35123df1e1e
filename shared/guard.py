"""The negative-transfer guard: a site serves the federated model only on robust validation evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


MIN_WINDOWS = 4  # judging windows the guard needs before it may serve the federated model


def judging_origins(val_size: int, horizon: int, stride: int) -> int:
    """Validation origins per series that judge: every other one (client.site.divide)."""
    origins = (val_size - horizon) // stride + 1 if val_size >= horizon else 0
    return origins // 2


def evidence_warning(val_size: int, horizon: int, stride: int) -> str:
    """Why a site with one series could never serve the federated model under these settings, or ""."""
    judging = judging_origins(val_size, horizon, stride)
    if judging >= MIN_WINDOWS:
        return ""
    who = (f"a site with fewer than {-(-MIN_WINDOWS // judging)} series" if judging else "every site")
    return (f"val-size {val_size} with horizon {horizon} and stride {stride} gives {judging} judging validation "
            f"origins per series, fewer than the guard's {MIN_WINDOWS}: {who} always serves alone_best; val-size "
            f"{horizon + (2 * MIN_WINDOWS - 1) * stride} gives every site enough")


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
           min_windows: int = MIN_WINDOWS) -> GuardDecision:
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
