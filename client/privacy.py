"""Local differential privacy for a site's encoder update: the train mod (docs/privacy.md).

Mods are fixed when client.app is imported, before any run config exists, so `privacy_mod` is
always registered and reads the dp-* settings from each message's context: the run config's,
overridden by the site's node config (a site that trusts no one sets dp="local" there itself). With dp "local"
it clips the site's update (the arrays it sends minus those it received) to L2 norm dp-clip and
adds Gaussian noise of std dp-noise x dp-clip to every value; otherwise it does nothing. Central DP
needs nothing here: the server clips and noises (server.privacy).

Flower's LocalDpMod does the same but fails on an unchanged encoder (shared.privacy) and takes its
noise as a classical-mechanism ε; the ε reported is the server's RDP account either way.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from shared.config import PrivacyArgs, read_args
from shared.privacy import clip

rng = np.random.default_rng()  # seeded from the OS: noise a server could replay would protect nothing


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train mod: with dp "local", clip the reply's update and add noise to it."""
    node_dp = {k: v for k, v in context.node_config.items() if k.startswith("dp")}
    privacy = read_args(PrivacyArgs, {**context.run_config, **node_dp})  # the site's own dp-* settings win
    if privacy.dp != "local":
        return call_next(msg, context)
    if privacy.dp_clip <= 0 or privacy.dp_noise <= 0:
        raise ValueError("dp-clip and dp-noise must be positive")
    (received,) = msg.content.array_records.values()
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    ((key, sent),) = reply.content.array_records.items()
    if list(sent) != list(received):
        raise ValueError("local DP: the reply's arrays must be the ones received, in the same order")
    base = {k: v.numpy() for k, v in received.items()}
    update = clip({k: sent[k].numpy() - base[k] for k in base}, privacy.dp_clip)
    std = privacy.dp_noise * privacy.dp_clip
    reply.content[key] = ArrayRecord({k: Array((base[k] + update[k] + rng.normal(0.0, std, base[k].shape))
                                               .astype(base[k].dtype)) for k in base})
    return reply
