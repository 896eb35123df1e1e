"""Clipping a model update to an L2 norm, for central (server) and local (site) differential privacy.

Flower 1.41's own clipping divides by the update's norm and so fails on an unchanged model
(flwrlabs/flower#7631), which a site sends when its fine-tuning never beats the received weights.
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
