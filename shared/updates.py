"""A site's encoder update checked before aggregation, and the rules that aggregate the updates.

A site's update is the encoder it returns minus the encoder it was sent. A check that fails raises
`Rejected` with a one-line reason; the server records it with the site and leaves the reply out of
the round. Aggregation runs in the order given (the server sorts the replies by site), so a run is
bit-reproducible: FedAvg as Flower's strategy computes it, the robust rules on the updates in
float64; the result has the sent encoder's dtype.

References: Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
Rates" (coordinate-wise median and trimmed mean).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from shared.config import FederationArgs
from shared.privacy import clip, l2_norm

State = dict[str, torch.Tensor]


class Rejected(ValueError):
    """A reply left out of aggregation; the message is the reason recorded with its site."""


def fedavg(received: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """The sites' arrays weighted by `weights` (McMahan et al. 2017), computed as Flower's FedAvg
    does (each array times its weight share, summed in site order in the arrays' dtype), so a run
    reproduces one aggregated by Flower's strategy bit for bit."""
    total = sum(weights)
    out = received[0] * (weights[0] / total)
    for values, weight in zip(received[1:], weights[1:]):
        out += values * (weight / total)
    return out


def median(stacked: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median over dim 0; the mean of the two middle values for an even count."""
    ordered, n = stacked.sort(dim=0).values, len(stacked)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def trimmed_mean(stacked: torch.Tensor, fraction: float) -> torch.Tensor:
    """Coordinate-wise mean over dim 0 after cutting int(fraction x n) of the n values at each end."""
    ordered, n = stacked.sort(dim=0).values, len(stacked)
    cut = int(fraction * n)
    return ordered[cut:n - cut].mean(0)


AGGREGATIONS = ("fedavg", "median", "trimmed-mean")


def check_settings(federation: FederationArgs) -> None:
    """ValueError naming the run-config key if an aggregation or update-check setting cannot be used."""
    if federation.aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {federation.aggregation!r}")
    if not 0 <= federation.trim_fraction < 0.5:
        raise ValueError(f"trim-fraction must be at least 0 and below 0.5, not {federation.trim_fraction}")
    for key, value in (("clip-update-norm", federation.clip_update_norm),
                       ("max-update-norm", federation.max_update_norm),
                       ("max-train-windows", federation.max_train_windows)):
        if not value >= 0:
            raise ValueError(f"{key} must be positive, or 0 for off, not {value}")


def check_update(sent: State, received: State, max_norm: float = 0.0) -> State:
    """The update `received` - `sent` (float64), if `received` has the sent arrays (names, shapes,
    dtypes), only finite values and, with `max_norm` > 0, an update of L2 norm at most `max_norm`."""
    if set(received) != set(sent):
        raise Rejected(f"arrays differ from those sent: missing {sorted(set(sent) - set(received))[:5]}, "
                       f"unexpected {sorted(set(received) - set(sent))[:5]}")
    for name, base in sent.items():
        got = received[name]
        if got.shape != base.shape or got.dtype != base.dtype:
            raise Rejected(f"{name} is {got.dtype} {tuple(got.shape)}, sent {base.dtype} {tuple(base.shape)}")
        if not torch.isfinite(got).all():
            raise Rejected(f"non-finite values in {name}")
    update = {name: received[name].double() - base.double() for name, base in sent.items()}
    norm = update_norm(update)
    if max_norm and norm > max_norm:
        raise Rejected(f"update norm {norm:.4g} above max-update-norm {max_norm:g}")
    return update


def update_norm(update: State) -> float:
    """The L2 norm of all of `update`'s tensors as one vector."""
    return l2_norm({name: u.numpy() for name, u in update.items()})


def clip_update(update: State, norm: float) -> State:
    """`update` scaled down to L2 norm `norm` when it is longer (shared.privacy.clip, on tensors)."""
    return {name: torch.as_tensor(u) for name, u in clip({k: v.numpy() for k, v in update.items()}, norm).items()}


def training_windows(claimed, first: int | None = None, cap: int = 0) -> int:
    """The weight of a reply claiming `claimed` training windows (its `num-examples`).

    It must be a positive whole number, and at most `cap` (0 = no cap). A site's windows do not
    grow within a run, so a claim above the site's `first` accepted one is weighed as `first`: an
    inflated claim gains nothing, and a site whose data did grow keeps its update in the round.
    """
    if (isinstance(claimed, bool) or not isinstance(claimed, (int, float)) or not math.isfinite(claimed)
            or claimed != int(claimed) or claimed < 1):
        raise Rejected(f"num-examples {claimed!r} is not a positive whole number of training windows")
    windows = int(claimed)
    if cap and windows > cap:
        raise Rejected(f"num-examples {windows} above max-train-windows {cap}")
    return windows if first is None else min(windows, first)


def aggregate(sent: State, updates: list[State], weights: list[int], rule: str = "fedavg",
              trim_fraction: float = 0.2, clip_norm: float = 0.0) -> State:
    """`sent` moved by the aggregate of `updates` (one per site, in site order; float64): for
    "fedavg" the weighted mean of the arrays the sites returned (`fedavg`), for the others `sent`
    plus the coordinate-wise rule over the updates.

    Args:
        rule: "fedavg" (mean weighted by `weights`, the sites' training windows), "median" or
            "trimmed-mean" (coordinate-wise, every site weighing the same).
        trim_fraction: trimmed-mean's share cut at each end; with fewer than 1 / trim_fraction
            sites nothing is cut.
        clip_norm: if positive, each update is first scaled down to this L2 norm.
    """
    if not updates:
        raise ValueError("no updates to aggregate")
    if clip_norm:
        updates = [clip_update(update, clip_norm) for update in updates]
    if rule == "fedavg":
        received = [{name: (base.double() + u[name]).to(base.dtype).numpy() for name, base in sent.items()}
                    for u in updates]
        return {name: torch.from_numpy(fedavg([r[name] for r in received], weights)) for name in sent}
    combine = {"median": median, "trimmed-mean": partial(trimmed_mean, fraction=trim_fraction)}[rule]
    return {name: (base.double() + combine(torch.stack([u[name] for u in updates]))).to(base.dtype)
            for name, base in sent.items()}