"""The negative-transfer guard: a site serves the federated model only on robust validation evidence."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from shared.data import Splits

SIGN_TEST_P = 0.1  # the federated model's wins must be this unlikely if it were no better than alone
MIN_WINDOWS = math.ceil(math.log2(1 / SIGN_TEST_P))  # 4: fewer windows cannot pass, even all won


def sign_test_p(wins: int, windows: int) -> float:
    """One-sided sign test: the chance of at least `wins` wins in `windows` if each were a coin toss."""
    return sum(math.comb(windows, k) for k in range(wins, windows + 1)) / 2**windows


def judging_origins(val_size: int, horizon: int, stride: int) -> int:
    """Validation origins per series that judge: every other one (divide)."""
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
    sign_p: float  # sign_test_p of those wins
    margin: float

    def to_dict(self) -> dict:
        return asdict(self)


def decide(federated: np.ndarray, alone: np.ndarray, margin: float = 0.02, max_p: float = SIGN_TEST_P) -> GuardDecision:
    """Serve the federated model only if, over the validation windows (per-window MAEs, aligned),

    - its mean MAE is at least `margin` below the alone option's (not a tie won by noise),
    - it wins in so many windows that a model no better than alone would rarely do so (one-sided
      sign test, p <= `max_p`; ties count as losses): one lucky window cannot carry the mean, and
      2 or 3 wins of 4 are not enough (with 4 judging windows, all 4 must be won).
    Otherwise the site keeps the best it can do alone.
    """
    federated, alone = np.asarray(federated, float), np.asarray(alone, float)
    if federated.shape != alone.shape:
        raise ValueError(f"validation errors differ in shape: {federated.shape} vs {alone.shape}")
    if not len(federated):
        return GuardDecision("alone_best", math.nan, math.nan, 0.0, 0, 1.0, margin)
    fed_mae, alone_mae = float(federated.mean()), float(alone.mean())
    wins = int((federated < alone).sum())
    p = sign_test_p(wins, len(federated))
    serve = "federated" if fed_mae <= (1.0 - margin) * alone_mae and p <= max_p else "alone_best"
    return GuardDecision(serve, fed_mae, alone_mae, wins / len(federated), len(federated), p, margin)


def divide(splits: Splits) -> tuple[Splits, np.ndarray]:
    """(fit, judging): the validation windows alternate by origin between two roles.

    `fit` (windows at even origins as its validation) steers training: early stopping and the
    local-only learning rate. `judging` marks the windows at odd origins, on which the guard
    compares the federated model with alone_best: a model's early stopping never saw them, so its
    error there is not optimistic, and both halves span the whole validation period. Choosing
    alone_best uses every validation window (the simple and statistical options never train on
    validation, and halving an already short period made that choice much noisier).
    """
    origins = np.unique(splits.val.origin)
    judging = np.searchsorted(origins, splits.val.origin) % 2 == 1
    return Splits(splits.train, splits.val.subset(~judging), splits.test), judging


PRIOR_WEIGHT = 8  # the established sites' evidence counts as this many of a new site's own validation windows
NEW_SITE_THRESHOLD = 0.6  # share of (prior-weighted) wins the shared forecast needs to be served
LOSS_MARGIN = 0.05  # an established site "lost" when the shared forecast's MAE is above its alone choice's by more
MAX_LOSS_SHARE = 0.1  # the (smoothed) share of such sites above which a new site keeps its alone choice


@dataclass(frozen=True)
class Prior:
    """Established sites' short-history reports at one history length, summed (shared.newsite): at how many
    the shared forecast won, lost by more than LOSS_MARGIN, of how many."""

    won: int = 0  # the shared forecast's MAE at least the guard margin below the alone choice's
    lost: int = 0  # above it by more than LOSS_MARGIN
    sites: int = 0

    def __post_init__(self) -> None:
        if min(self.won, self.lost) < 0 or self.won + self.lost > self.sites:
            raise ValueError(f"prior {self}: won and lost must be non-negative and together at most the sites")

    def __add__(self, other: Prior) -> Prior:
        return Prior(self.won + other.won, self.lost + other.lost, self.sites + other.sites)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NewSiteDecision:
    """What a site with little history serves, with the evidence behind it (see decide_new)."""

    serve: str  # "shared" or "alone_best"
    history: int  # points of the site's own history
    prior_won: int  # established sites where the shared forecast won; lost by more than LOSS_MARGIN; in all
    prior_lost: int
    prior_sites: int
    own_wins: int  # the site's own validation windows the shared forecast won
    own_windows: int
    score: float
    loss_share: float
    threshold: float
    max_loss_share: float

    def to_dict(self) -> dict:
        return asdict(self)


def decide_new(history: int, prior: Prior, shared: np.ndarray, alone: np.ndarray,
               prior_weight: float = PRIOR_WEIGHT, threshold: float = NEW_SITE_THRESHOLD,
               max_loss_share: float = MAX_LOSS_SHARE) -> NewSiteDecision:
    """Serve the shared forecast at a site with little history when both

        score      = (prior_weight * (won + 1) / (sites + 2) + own wins) / (prior_weight + own windows)
        loss share = (lost + 1) / (sites + 2)

    meet their bounds: score >= `threshold`, loss share <= `max_loss_share`. won, lost and sites are the
    established sites' (Prior): at how many the shared forecast beat the alone option they would have picked
    with `history` points, and lost to it by more than LOSS_MARGIN, on their validation windows. The site's
    own validation windows (per-window MAEs of the shared forecast and of its alone choice, aligned) count
    one each in the score, so the decision moves to its own evidence as its history grows; the loss share
    bounds the risk by what the established sites saw (it needs at least 8 of them, none lost). No test data.
    """
    shared, alone = np.asarray(shared, float), np.asarray(alone, float)
    if shared.shape != alone.shape:
        raise ValueError(f"validation errors differ in shape: {shared.shape} vs {alone.shape}")
    wins = int((shared < alone).sum())
    score = (prior_weight * (prior.won + 1) / (prior.sites + 2) + wins) / (prior_weight + len(shared))
    loss_share = (prior.lost + 1) / (prior.sites + 2)
    serve = "shared" if score >= threshold and loss_share <= max_loss_share else "alone_best"
    return NewSiteDecision(serve, history, prior.won, prior.lost, prior.sites, wins, len(shared), score,
                           loss_share, threshold, max_loss_share)
