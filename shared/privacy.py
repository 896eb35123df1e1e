"""Differential privacy arithmetic shared by server and sites: clipping an update to an L2 norm, and
the ε that rounds of the Gaussian mechanism spend (and the noise that spends a given ε).

Flower 1.41's own clipping divides by the update's norm and so fails on an unchanged model
(flwrlabs/flower#7631), which a site sends when its fine-tuning never beats the received weights.

The account is Google's dp-accounting RDP accountant (Mironov 2017; converted to (ε, δ) as in
Canonne et al. 2020), set up exactly as Flower's `RdpAccountant` in the server's DP strategy (add or
remove one site, default orders, no sampling amplification) and composed one round at a time as it
is, so a noise calibrated here spends, round for round, the ε that strategy reports.
"""

from __future__ import annotations

import math

import numpy as np


def l2_norm(update: dict[str, np.ndarray]) -> float:
    """The L2 norm of all of `update`'s arrays as one vector."""
    return math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update.values()))


def clip(update: dict[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    """`update` scaled to L2 norm `norm` (all its arrays as one vector) when it is longer."""
    length = l2_norm(update)
    scale = min(1.0, norm / length) if length > 0 else 1.0
    return {k: u * scale for k, u in update.items()}


def epsilon_after(noise: float, rounds: int, delta: float) -> float:
    """ε at `delta` that `rounds` rounds of the Gaussian mechanism with noise multiplier `noise` spend."""
    from dp_accounting import GaussianDpEvent  # imported here: sites clip without paying for scipy
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for _ in range(rounds):  # one composition per round, as the server's account adds them
        accountant.compose(GaussianDpEvent(noise))
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 0.1 %) with which `rounds` rounds spend at most `epsilon` at `delta`."""
    if epsilon <= 0 or rounds < 1:
        raise ValueError("epsilon must be positive and rounds at least 1")
    low, high = 1e-2, 1e4
    if epsilon_after(high, rounds, delta) > epsilon:
        raise ValueError(f"ε = {epsilon} at δ = {delta} over {rounds} rounds needs a noise multiplier above {high:g}")
    while high / low > 1.001:
        middle = (low * high) ** 0.5
        low, high = (low, middle) if epsilon_after(middle, rounds, delta) <= epsilon else (middle, high)
    return high
