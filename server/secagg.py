"""Encoder rounds under SecAgg+: the server learns only the weighted sum of the sites' updates.

Flower 1.41 has SecAgg+ only in its legacy API: `SecAggPlusWorkflow`, driven by a legacy
`flwr.server.strategy` strategy through a `LegacyContext`, normally inside a `DefaultWorkflow`
that runs all rounds itself. `SecAggTrain` is instead the round loop's train phase
(server.rounds): each call runs the workflow for one round, numbered as the run numbers it, with
`SecAggFedAvg` over the arrays of a state dict (their order is the state dict's key order, sent to
the sites as `array-keys`), so checkpoints, resume, per-site rows and evaluation (ordinary
messages: evaluation sends no update back) are the plain rounds' own. The sites' side is
`client.secagg.secagg_mod`.

How SecAgg+ weights (flwr/client/mod/secure_aggregation/secaggplus_mod.py): each site sends
masked [q(w), q(w * params)] with w = num_examples / max_weight (w quantised to 1/Q); the
server unmasks only their sums and divides, so the result is FedAvg weighted by num-examples and
the server learns the total weight (sum of num-examples / max_weight), not one site's. Flower's
mod leaves each site's num_examples and metrics in plain text beside the masked vector;
`secagg_mod` zeroes num_examples and drops the `num-examples` metric. A site with more training
windows than `max_weight` is weighted as `max_weight` (it reports `secagg-weight-capped`).
Parameters times w must lie within +-`clipping_range` (sites refuse to send otherwise); each is
quantised (stochastically, so without bias) to steps of 2 * clipping_range / Q. Flower's default
Q = 2**22 put the aggregate about 4e-5 from FedAvg on the demo, some 1% of a round's update; so Q
is chosen per round as the largest power of two with (sampled sites) * Q < 2**32 (masks live
modulo 2**32; at most 2**30), making the aggregate within sites * 2 * clipping_range / Q *
max_weight / total num-examples of the exact FedAvg (`error_bound`).

The server cannot check one site's update, only the unmasked aggregate (`check_aggregate`): it must be
finite and, with `clip-update-norm` set, no farther from the encoder sent than that norm plus the
quantisation error, since each site clips its own update to that norm before masking
(client.secagg.bounded); otherwise the round fails (`AggregateRejected`) and nothing of it is kept.

What protects an update is the masks, and Flower 1.41 draws them from numpy's Mersenne Twister
seeded with 32 bits folded from each 32-byte key (`secaggplus_utils.pseudo_rand_gen`), not from
a cryptographic generator; and its server has no consistency check, so SecAgg+ here protects
against an honest-but-curious server, not a malicious one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from logging import INFO, WARNING
from typing import Any

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server import LegacyContext
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from server.rounds import Arrays, Sign
from server.strategy import EncoderFedAvg, SiteLog, TooFewSites
from shared.checkpoint import write_json
from shared.config import Settings
from shared.privacy import l2_norm

# Keys of the fit config that `client.secagg` reads (the rest is passed on to the train handler).
ARRAY_KEYS = "array-keys"  # JSON list: the state-dict key of each legacy parameter, in order
MAX_WEIGHT = "secagg-max-weight"
CLIPPING_RANGE = "secagg-clipping-range"
SITE_METRIC = "site"  # the site's name, carried in its FitRes metrics
CAPPED_METRIC = "secagg-weight-capped"

DEFAULT_MAX_WEIGHT = 10_000.0  # training windows; larger sites are weighted as this many
DEFAULT_CLIPPING_RANGE = 8.0  # Flower's default; encoder weights here stay near |1|


def quantization_range(sites: int) -> int:
    """The largest power of two Q <= 2**30 with sites * Q < 2**32: the sum of `sites` quantised
    values (each in [0, Q]) then never wraps around the masks' modulus."""
    return 2 ** min(30, 32 - max(1, sites).bit_length())


def error_bound(weights: list[float], max_weight: float, clipping_range: float = DEFAULT_CLIPPING_RANGE,
                quantization: int | None = None) -> float:
    """Largest |SecAgg+ aggregate - exact FedAvg| per parameter, before the cast to float32."""
    q = quantization or quantization_range(len(weights))
    return len(weights) * 2 * clipping_range / q * max_weight / sum(min(w, max_weight) for w in weights)


class AggregateRejected(RuntimeError):
    """A SecAgg+ round's unmasked aggregate failed `check_aggregate`. As on TooFewSites, the round is not
    checkpointed and the run stops: the server cannot tell which site's update caused it."""


def check_aggregate(server_round: int, sent: dict[str, np.ndarray], aggregate: dict[str, np.ndarray],
                    clip_norm: float, error: float) -> None:
    """AggregateRejected unless the unmasked `aggregate` is finite and, with `clip_norm` > 0, its update
    from `sent` has an L2 norm within `clip_norm` plus SecAgg+'s quantisation error (`error` per
    parameter, as `error_bound`, over all parameters) and float rounding.

    Each site scales its update down to `clip_norm` before masking (client.secagg.bounded), so the
    weighted mean of honest updates is no longer than that; a longer one holds an unclipped update.
    """
    where = f"round {server_round} (train, SecAgg+)"
    for name, values in aggregate.items():
        if not np.isfinite(values).all():
            raise AggregateRejected(f"{where}: the unmasked aggregate holds non-finite values in {name}; "
                                    "nothing of this round is kept")
    if not clip_norm:
        return
    norm = l2_norm({name: aggregate[name].astype(np.float64) - base.astype(np.float64) for name, base in sent.items()})
    limit = clip_norm + math.sqrt(sum(base.size for base in sent.values())) * error
    rounding = max((np.finfo(base.dtype).eps for base in sent.values() if np.issubdtype(base.dtype, np.floating)),
                   default=0.0)  # the sites' and the server's casts to the arrays' dtype
    limit += rounding * (l2_norm(sent) + limit)
    if norm > limit:
        raise AggregateRejected(f"{where}: the aggregate update's L2 norm {norm:.6g} exceeds {limit:.6g} "
                                f"(clip-update-norm {clip_norm:g} plus SecAgg+'s quantisation error): some site did "
                                "not clip its update; nothing of this round is kept")


def _like(ndarrays: list[np.ndarray], reference: list[np.ndarray]) -> list[np.ndarray]:
    """SecAgg+ dequantises to float64: back to each reference array's dtype and shape."""
    out = []
    for arr, ref in zip(ndarrays, reference, strict=True):
        arr = np.asarray(arr).reshape(ref.shape)
        out.append((np.rint(arr) if np.issubdtype(ref.dtype, np.integer) else arr).astype(ref.dtype))
    return out


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg for one round of `SecAggPlusWorkflow`: the workflow has already averaged.

    `SecAggPlusWorkflow.unmask_stage` puts the unmasked, num-examples-weighted average into every
    result's parameters before calling `aggregate_fit`; this keeps it once (cast back to the
    arrays' own dtypes, as `aggregate`) instead of averaging n copies, and records per-site `rows`:
    each reply's plain-text metrics with its site, and an error row for each sampled site that
    dropped out. `aggregate` stays None if the secure aggregation halted.

    Args:
        reference: the arrays sent, in the legacy parameters' order (for dtypes and shapes).
        fit_config: the config every sampled site gets.
        names: node id -> site name, shared with the caller (filled from replies).
        on_sample: called with the number of sites sampled, before the SecAgg+ setup stage reads
            its quantisation range (SecAggPlusWorkflow.setup_stage calls configure_fit first).
    """

    def __init__(self, reference: list[np.ndarray], fit_config: dict, names: dict[int, str],
                 on_sample: Callable[[int], None], **kwargs):
        super().__init__(fraction_evaluate=0.0, min_evaluate_clients=0, accept_failures=True, **kwargs)
        self.reference, self.fit_config, self.names, self.on_sample = reference, fit_config, names, on_sample
        self.started = time.monotonic()
        self.ended: float | None = None
        self.sampled: list[int] = []
        self.rows: list[dict] = []
        self.aggregate: list[np.ndarray] | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager
                      ) -> list[tuple[ClientProxy, FitIns]]:
        self.started = time.monotonic()
        sample_size, min_num = self.num_fit_clients(client_manager.num_available())
        proxies = client_manager.sample(num_clients=sample_size, min_num_clients=min_num)
        self.sampled = sorted(proxy.node_id for proxy in proxies)
        self.on_sample(len(proxies))
        fit_ins = FitIns(parameters, self.fit_config)
        return [(proxy, fit_ins) for proxy in proxies]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict]:
        self.rows = self.site_rows(server_round, results)
        self.ended = time.monotonic()
        if not results:
            return None, {}
        # every result holds the same aggregate (see the class docstring)
        self.aggregate = _like(parameters_to_ndarrays(results[0][1].parameters), self.reference)
        capped = [row["site"] for row in self.rows if row.get(CAPPED_METRIC)]
        if capped:
            log(WARNING, "SecAgg+: weights of %s capped at the max weight", ", ".join(capped))
        return ndarrays_to_parameters(self.aggregate), {"sites": len(results)}

    def site_rows(self, server_round: int, results: list[tuple[ClientProxy, FitRes]]) -> list[dict]:
        """Per-site train rows as `server.strategy.SiteLog` writes them, sorted by site."""
        rows, replied = [], set()
        for proxy, res in results:
            metrics = dict(res.metrics)
            site = str(metrics.pop(SITE_METRIC, f"node-{proxy.node_id}"))
            self.names[proxy.node_id] = site
            replied.add(proxy.node_id)
            rows.append({"round": server_round, "phase": "train", "node_id": proxy.node_id, "site": site, **metrics})
        for node in self.sampled:
            if node not in replied:
                rows.append({"round": server_round, "phase": "train", "node_id": node,
                             "site": self.names.get(node, f"node-{node}"), "error": "dropped out of the SecAgg+ round"})
        return sorted(rows, key=lambda row: row["site"])


def secagg_settings(settings: Settings, run_config: Mapping[str, Any] | None = None) -> dict:
    """SecAgg+ parameters: shares and threshold from `settings.privacy`; max weight and clipping
    range from the run config keys `secagg-max-weight` / `secagg-clipping-range` if it has them."""
    run_config = run_config or {}
    return {
        "num_shares": settings.privacy.secagg_shares,
        "reconstruction_threshold": settings.privacy.secagg_threshold,
        "max_weight": float(run_config.get(MAX_WEIGHT, DEFAULT_MAX_WEIGHT)),
        "clipping_range": float(run_config.get(CLIPPING_RANGE, DEFAULT_CLIPPING_RANGE)),
    }


class SecAggTrain:
    """The round loop's train phase under SecAgg+: each call is one round of FedAvg under SecAgg+.

    Each round's per-site train rows go to `fedavg`'s log and its seconds (sampling to aggregate)
    to `fedavg.round_times`, as EncoderFedAvg's own rounds do. A round with fewer aggregated sites
    than `fedavg.min_train_nodes` (every round whose secure aggregation halted) raises TooFewSites,
    and one whose aggregate fails `check_aggregate` AggregateRejected, so the loop checkpoints nothing
    for it; dropouts within SecAgg+'s threshold and above that minimum complete it.

    Args:
        grid, context: the ServerApp's (the context is wrapped in a LegacyContext each round).
        settings: the run's settings (SecAgg+ shares and threshold, clip-update-norm for the aggregate's
            check; central or local DP is refused).
        fedavg: the strategy whose sampling fraction and minimum the rounds use, and whose per-site
            log and round times they go to.
        config: the fit config every site gets (legacy scalars: int, float, str, bytes, bool);
            `server-round`, `array-keys`, the SecAgg+ bounds and, with `sign(arrays, round)`, the
            `encoder-signature` of the arrays sent are added.
        timeout: seconds each SecAgg+ stage waits for replies (None: until all replied or failed).
        **secagg: overrides of `secagg_settings` (num_shares, reconstruction_threshold,
            max_weight, clipping_range) and `SecAggPlusWorkflow`'s other arguments; a
            `quantization_range` given here is used as is, for every round.
    """

    def __init__(self, grid: Grid, context: Context, settings: Settings, fedavg: EncoderFedAvg,
                 config: Mapping[str, Any], *, sign: Sign | None = None, timeout: float | None = None,
                 **secagg: Any):
        if settings.privacy.dp != "none":
            raise ValueError(f"secagg with dp={settings.privacy.dp!r} is not supported: central DP clips each "
                             "site's plain update, which SecAgg+ hides from the server; local DP's ε account "
                             "lives in the plain round phase (server.privacy)")
        self.grid, self.context, self.fedavg, self.config = grid, context, fedavg, dict(config)
        self.sign, self.clip_norm = sign, settings.federation.clip_update_norm
        self.params = secagg_settings(settings, context.run_config) | secagg
        workflow_args = {k: v for k, v in self.params.items() if k not in ("num_shares", "reconstruction_threshold")}
        self.workflow = SecAggPlusWorkflow(self.params["num_shares"], self.params["reconstruction_threshold"],
                                           timeout=timeout, **workflow_args)
        self.adapt_quantization = "quantization_range" not in self.params
        log(INFO, "SecAgg+: %s shares, threshold %s, max weight %s, clipping range %s", self.params["num_shares"],
            self.params["reconstruction_threshold"], self.params["max_weight"], self.params["clipping_range"])

    def __call__(self, server_round: int, arrays: Arrays) -> Arrays:
        """The global arrays after round `server_round`, trained from `arrays`."""
        keys = list(arrays)
        reference = [np.asarray(arrays[k].detach().cpu()) for k in keys]
        fit_config = {**self.config, "server-round": server_round, ARRAY_KEYS: json.dumps(keys),
                      MAX_WEIGHT: float(self.params["max_weight"]),
                      CLIPPING_RANGE: float(self.params["clipping_range"])}
        if self.sign:
            fit_config["encoder-signature"] = self.sign(arrays, server_round)
        fedavg = self.fedavg
        strategy = SecAggFedAvg(reference, fit_config, fedavg.log.names, self.set_quantization,
                                fraction_fit=fedavg.fraction_train, min_fit_clients=fedavg.min_train_nodes,
                                min_available_clients=fedavg.min_available_nodes)
        legacy = LegacyContext(self.context, strategy=strategy)
        # the state SecAggPlusWorkflow reads: the round (messages' group id, the strategy's round) and the arrays
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(reference), keep_input=True)
        # as DefaultWorkflow does: the client manager follows the grid's nodes while the round runs
        thread, stop, registered = start_update_client_manager_thread(self.grid, legacy.client_manager)
        registered.wait()
        try:
            self.workflow(self.grid, legacy)
        finally:
            stop.set()
            thread.join()

        rows = strategy.rows or [{"round": server_round, "phase": "train", "node_id": node,
                                  "site": fedavg.log.name(node), "error": "SecAgg+ round halted"}
                                 for node in strategy.sampled]  # halted before aggregate_fit
        _log_rows(fedavg.log, rows)
        usable = sum("error" not in row for row in rows) if strategy.aggregate is not None else 0
        if usable < fedavg.min_train_nodes:
            missing = sorted(row["site"] for row in rows if "error" in row)
            halted = "" if strategy.aggregate is not None else " (the secure aggregation halted)"
            raise TooFewSites(f"round {server_round} (train, SecAgg+): {usable} sites aggregated{halted}, at least "
                              f"{fedavg.min_train_nodes} needed (min-train-nodes); "
                              f"missing: {', '.join(missing) or 'none'}")
        aggregate = dict(zip(keys, strategy.aggregate, strict=True))
        # the smallest total weight `usable` sites can have (one training window each) bounds the error
        error = error_bound([1] * usable, self.params["max_weight"], self.params["clipping_range"],
                            self.workflow.quantization_range)
        check_aggregate(server_round, dict(zip(keys, reference, strict=True)), aggregate, self.clip_norm, error)
        fedavg.round_times[server_round] = (strategy.ended or time.monotonic()) - strategy.started
        return {k: torch.from_numpy(a) for k, a in aggregate.items()}

    def set_quantization(self, sites: int) -> None:
        """Sets the round's quantisation range for `sites` sampled sites (unless one was given)."""
        if self.adapt_quantization:
            self.workflow.quantization_range = quantization_range(sites)
            log(INFO, "SecAgg+: %d sites sampled, quantisation range 2**%d", sites,
                self.workflow.quantization_range.bit_length() - 1)


def _log_rows(site_log: SiteLog, rows: list[dict]) -> None:
    """Add train rows to a SiteLog as its `add` does (sorted, rewritten, errors printed)."""
    for row in rows:
        if "error" in row:
            print(f"round {row['round']} (train): no usable reply from {row['site']}: {row['error']}", flush=True)
    site_log.rows += rows
    site_log.rows.sort(key=lambda r: (r["round"], r["phase"] != "train", r["site"]))
    write_json(site_log.path, site_log.rows)
