"""The sites' side of SecAgg+ rounds (`server.secagg`), as a mod on the ordinary train handler.

    @app.train(mods=[secagg_mod])      # first, so later mods (e.g. DP clipping) see plain messages

Ordinary train messages pass through untouched. A message carrying SecAgg+ configuration goes to
Flower's `secaggplus_mod`; three of its four stages (keys, shares, unmasking) never reach the
handler. In the stage that collects masked vectors, the legacy fit instruction (legacy parameters
in `fitins.parameters`, a flat `fitins.config`) is turned into the message the handler already
serves ("arrays" packed with their `array-layout`, shared.wire; "config"), and the handler's reply ("arrays",
"metrics" with num-examples, "site") into the legacy FitRes `secaggplus_mod` masks. The server sees
only the sum, so it cannot check one site's update: the site does, before masking. It refuses to send
non-finite values, and with the run config's `clip-update-norm` > 0 scales its update (the encoder it
returns minus the one it received) down to that L2 norm (shared.updates.clip_update). The masked
reply then keeps only what the server needs: num_examples is zeroed and `num-examples` dropped
from the plain-text metrics (the weight travels inside the masked vector), and the masked
integers travel as uint32 instead of int64.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (Code, FitRes, Status, bytes_to_ndarray, ndarray_to_bytes, ndarrays_to_parameters,
                         parameters_to_ndarrays)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.compat.common import recorddict_compat as compat

from shared import wire
from shared.checkpoint import check_finite
from shared.config import Settings
from shared.updates import State, clip_update

# the fit-config keys `server.secagg` adds (kept here too: a site imports no server code)
ARRAY_KEYS = "array-keys"
MAX_WEIGHT = "secagg-max-weight"
CLIPPING_RANGE = "secagg-clipping-range"
SITE_METRIC = "site"
CAPPED_METRIC = "secagg-weight-capped"
MASKED = Key.MASKED_PARAMETERS
_SCALARS = (bool, int, float, str, bytes)


def is_secagg(msg: Message) -> bool:
    """A train message of a SecAgg+ round (any stage)."""
    return msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Serve SecAgg+ rounds with the ordinary train handler; pass every other message through."""
    if not is_secagg(msg):
        return call_next(msg, context)
    reply = secaggplus_mod(msg, context, lambda m, c: legacy_fit(m, c, call_next))
    if not reply.has_error() and "fitres.num_examples" in reply.content.metric_records:
        reply.content.metric_records["fitres.num_examples"]["num_examples"] = 0  # the weight is masked
        configs = reply.content.config_records[RECORD_KEY_CONFIGS]
        configs[MASKED] = [_narrow(b) for b in configs[MASKED]]
    return reply


def _narrow(data: bytes) -> bytes:
    """A masked array as uint32 rather than Flower's int64: its values lie in [0, 2**32) and the
    server's sums are taken modulo 2**32 anyway, so this halves the upload and changes nothing."""
    array = bytes_to_ndarray(data)
    if array.dtype.kind not in "iu" or array.size and (array.min() < 0 or array.max() >= 2**32):
        raise ValueError("SecAgg+: a masked vector outside [0, 2**32)")
    return ndarray_to_bytes(array.astype(np.uint32))


def to_plain(content: RecordDict) -> tuple[RecordDict, wire.Layout, float, float]:
    """(ordinary train content, its array layout, max weight, clipping range) of a legacy fit instruction."""
    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    config = dict(fitins.config)
    keys = json.loads(str(config.pop(ARRAY_KEYS)))
    max_weight, clipping_range = float(config.pop(MAX_WEIGHT)), float(config.pop(CLIPPING_RANGE))
    ndarrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(ndarrays):
        raise ValueError(f"SecAgg+ fit instruction: {len(ndarrays)} arrays for {len(keys)} keys")
    state = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in zip(keys, ndarrays, strict=True)}
    layout = wire.layout_of(state)
    config[wire.LAYOUT] = wire.dumps(layout)
    return RecordDict({"arrays": ArrayRecord(wire.pack(state)), "config": ConfigRecord(config)}), layout, max_weight, clipping_range


def bounded(received: State, returned: State, clip_norm: float) -> State:
    """`returned` with its update from `received` scaled down to L2 norm `clip_norm` when longer (0: as
    returned); ValueError if it holds non-finite values."""
    check_finite(returned, "SecAgg+: the encoder this site would send")
    if not clip_norm:
        return returned
    update = clip_update({name: returned[name].double() - base.double() for name, base in received.items()}, clip_norm)
    return {name: (base.double() + update[name]).to(returned[name].dtype) for name, base in received.items()}


def to_legacy(reply: RecordDict, layout: wire.Layout, max_weight: float, clipping_range: float,
              received: State | None = None, clip_norm: float = 0.0) -> RecordDict:
    """The legacy FitRes content `secaggplus_mod` masks, from the handler's ordinary reply.

    The weight is the reply's num-examples, capped at `max_weight` (flagged in the metrics). The arrays
    must be finite; with `clip_norm` > 0 their update from `received` (the encoder the site was sent)
    is bounded first (`bounded`). Raises ValueError if a weighted parameter would be clipped by the
    quantisation, which would corrupt the sum.
    """
    if len(reply.array_records) != 1 or len(reply.metric_records) != 1:
        raise ValueError("a train reply must hold exactly one ArrayRecord and one MetricRecord")
    sent = bounded(received, wire.unpack(next(iter(reply.array_records.values())), layout), clip_norm)
    metrics = dict(next(iter(reply.metric_records.values())))
    num_examples = int(metrics.pop("num-examples"))
    weight = min(num_examples, int(max_weight))
    ndarrays = [sent[name].numpy() for name, _ in layout]
    largest = max((float(np.abs(a).max()) for a in ndarrays if a.size), default=0.0)
    if largest * weight / max_weight > clipping_range:
        raise ValueError(f"SecAgg+ would clip this update: |parameter| up to {largest:.3g} with weight "
                         f"{weight}/{max_weight:g} exceeds the clipping range {clipping_range:g}")
    legacy = {k: v for k, v in metrics.items() if isinstance(v, _SCALARS)}
    site = dict(reply.config_records.get("site", {}))  # the site's name and what it reports beside
    if "name" in site:
        legacy[SITE_METRIC] = str(site.pop("name"))
    legacy |= {k: v for k, v in site.items() if isinstance(v, _SCALARS)}
    legacy[CAPPED_METRIC] = int(weight < num_examples)
    # float64: secaggplus_mod computes (params * w + clipping_range) * Q / (2 * clipping_range) in the
    # arrays' dtype, and float32 near 8 would round to 1e-6, far coarser than the quantisation
    # (these arrays are cleared before the reply leaves the site: only the masked integers travel)
    wide = [a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a for a in ndarrays]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(wide), weight, legacy)
    return compat.fitres_to_recorddict(fitres, keep_input=False)


def legacy_fit(msg: Message, context: Context, handler: ClientAppCallable) -> Message:
    """Run the ordinary train handler on a legacy fit instruction; reply as a legacy FitRes, the site's
    update bounded to the run config's `clip-update-norm`."""
    legacy_content = msg.content
    plain, layout, max_weight, clipping_range = to_plain(legacy_content)
    received = wire.unpack(plain["arrays"], layout)
    clip_norm = Settings.from_config(context.run_config).federation.clip_update_norm
    msg.content = plain
    try:
        reply = handler(msg, context)
    finally:
        msg.content = legacy_content
    if reply.has_error():
        raise RuntimeError(f"train handler failed in a SecAgg+ round: {reply.error.reason}")
    return Message(to_legacy(reply.content, layout, max_weight, clipping_range, received, clip_norm), reply_to=msg)
