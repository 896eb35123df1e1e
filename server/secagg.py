"""Encoder rounds under SecAgg+: the server learns only the weighted sum of the sites' updates.

Flower 1.41 has SecAgg+ only in its legacy API: `SecAggPlusWorkflow` inside a `DefaultWorkflow`,
driven by a legacy `flwr.server.strategy` strategy through a `LegacyContext`. `run_secagg` runs
that with `SecAggFedAvg` over the arrays of a state dict (their order is the state dict's key
order, sent to the sites as `array-keys`) and calls `on_round` after every round.
`run_secagg_rounds` is `server.rounds.run_rounds` with training under SecAgg+: same arguments,
same checkpoints after every phase, same resume, same per-site rows and evaluation (ordinary
messages: evaluation sends no update back). The sites' side is `client.secagg.secagg_mod`.

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

What protects an update is the masks, and Flower 1.41 draws them from numpy's Mersenne Twister
seeded with 32 bits folded from each 32-byte key (`secaggplus_utils.pseudo_rand_gen`), not from
a cryptographic generator; and its server has no consistency check, so SecAgg+ here protects
against an honest-but-curious server, not a malicious one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common import FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from shared import wire
from shared.checkpoint import write_json
from shared.config import Settings

# Keys of the fit config that `client.secagg` reads (the rest is passed on to the train handler).
ARRAY_KEYS = "array-keys"  # JSON list: the state-dict key of each legacy parameter, in order
MAX_WEIGHT = "secagg-max-weight"
CLIPPING_RANGE = "secagg-clipping-range"
SITE_METRIC = "site"  # the site's name, carried in its FitRes metrics
CAPPED_METRIC = "secagg-weight-capped"

DEFAULT_MAX_WEIGHT = 10_000.0  # training windows; larger sites are weighted as this many
DEFAULT_CLIPPING_RANGE = 8.0  # Flower's default; encoder weights here stay near |1|

OnRound = Callable[[int, ArrayRecord, "RoundRecord"], None]
Sign = Callable[[dict[str, torch.Tensor], int], bytes]


def quantization_range(sites: int) -> int:
    """The largest power of two Q <= 2**30 with sites * Q < 2**32: the sum of `sites` quantised
    values (each in [0, Q]) then never wraps around the masks' modulus."""
    return 2 ** min(30, 32 - max(1, sites).bit_length())


def error_bound(weights: list[float], max_weight: float, clipping_range: float = DEFAULT_CLIPPING_RANGE,
                quantization: int | None = None) -> float:
    """Largest |SecAgg+ aggregate - exact FedAvg| per parameter, before the cast to float32."""
    q = quantization or quantization_range(len(weights))
    return len(weights) * 2 * clipping_range / q * max_weight / sum(min(w, max_weight) for w in weights)


def to_legacy(state: Mapping[str, torch.Tensor]) -> tuple[list[str], Parameters]:
    """(keys, legacy Parameters) of a state dict; the i-th array is the i-th key's."""
    keys = list(state)
    return keys, ndarrays_to_parameters([np.asarray(state[k].detach().cpu()) for k in keys])


def from_legacy(keys: list[str], ndarrays: list[np.ndarray]) -> ArrayRecord:
    """An ArrayRecord keyed like the state dict, from legacy arrays in key order."""
    if len(keys) != len(ndarrays):
        raise ValueError(f"{len(ndarrays)} arrays for {len(keys)} state-dict keys")
    return ArrayRecord({k: Array(np.ascontiguousarray(a)) for k, a in zip(keys, ndarrays, strict=True)})


def _like(ndarrays: list[np.ndarray], reference: list[np.ndarray]) -> list[np.ndarray]:
    """SecAgg+ dequantises to float64: back to each reference array's dtype and shape."""
    out = []
    for arr, ref in zip(ndarrays, reference, strict=True):
        arr = np.asarray(arr).reshape(ref.shape)
        out.append((np.rint(arr) if np.issubdtype(ref.dtype, np.integer) else arr).astype(ref.dtype))
    return out


@dataclass
class RoundRecord:
    """What the strategy saw of one round: who was sampled, who replied, when."""

    started: float = 0.0
    ended: float | None = None
    sampled: list[int] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # per-site train rows, sorted by site
    aggregated: bool = False  # False: the secure aggregation halted, the global is unchanged

    @property
    def seconds(self) -> float:
        """From sampling to the aggregate (or to now)."""
        return (self.ended or time.monotonic()) - self.started


class SecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg for `SecAggPlusWorkflow`: the workflow has already averaged.

    `SecAggPlusWorkflow.unmask_stage` puts the unmasked, num-examples-weighted average into every
    result's parameters before calling `aggregate_fit`; this returns it once (cast back to the
    arrays' own dtypes) instead of averaging n copies, and records per-site rows: each reply's
    plain-text metrics with its site, and an error row for each sampled site that dropped out.

    Args:
        keys, reference: the state dict's keys and arrays (for dtypes and shapes).
        fit_config: (round, state sent) -> the config every sampled site gets.
        names: node id -> site name, shared with the caller (filled from replies).
        offset: the workflow counts rounds from 1; the run's round is offset + that.
        on_sample: called with the number of sites sampled, before the SecAgg+ setup stage reads
            its quantisation range (SecAggPlusWorkflow.setup_stage calls configure_fit first).
    """

    def __init__(self, keys: list[str], reference: list[np.ndarray],
                 fit_config: Callable[[int, dict[str, torch.Tensor]], dict], names: dict[int, str],
                 offset: int = 0, on_sample: Callable[[int], None] | None = None, **kwargs):
        super().__init__(fraction_evaluate=0.0, min_evaluate_clients=0, accept_failures=True, **kwargs)
        self.keys, self.reference, self.fit_config = keys, reference, fit_config
        self.names, self.offset, self.on_sample = names, offset, on_sample
        self.rounds: dict[int, RoundRecord] = {}

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager
                      ) -> list[tuple[ClientProxy, FitIns]]:
        run_round = self.offset + server_round
        record = self.rounds[run_round] = RoundRecord(started=time.monotonic())
        sent = from_legacy(self.keys, parameters_to_ndarrays(parameters)).to_torch_state_dict()
        fit_ins = FitIns(parameters, self.fit_config(run_round, sent))
        sample_size, min_num = self.num_fit_clients(client_manager.num_available())
        proxies = client_manager.sample(num_clients=sample_size, min_num_clients=min_num)
        record.sampled = sorted(proxy.node_id for proxy in proxies)
        if self.on_sample is not None:
            self.on_sample(len(proxies))
        return [(proxy, fit_ins) for proxy in proxies]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict]:
        run_round = self.offset + server_round
        record = self.rounds[run_round]
        record.rows = self.rows(run_round, results)
        record.ended = time.monotonic()
        if not results:
            return None, {}
        # every result holds the same aggregate (see the class docstring)
        aggregate = _like(parameters_to_ndarrays(results[0][1].parameters), self.reference)
        record.aggregated = True
        capped = [row["site"] for row in record.rows if row.get(CAPPED_METRIC)]
        if capped:
            log(WARNING, "SecAgg+: weights of %s capped at the max weight", ", ".join(capped))
        return ndarrays_to_parameters(aggregate), {"sites": len(results)}

    def rows(self, run_round: int, results: list[tuple[ClientProxy, FitRes]]) -> list[dict]:
        """Per-site train rows as `server.strategy.SiteLog` writes them, sorted by site."""
        rows, replied = [], set()
        for proxy, res in results:
            metrics = dict(res.metrics)
            site = str(metrics.pop(SITE_METRIC, f"node-{proxy.node_id}"))
            self.names[proxy.node_id] = site
            replied.add(proxy.node_id)
            rows.append({"round": run_round, "phase": "train", "node_id": proxy.node_id, "site": site, **metrics})
        for node in self.rounds[run_round].sampled:
            if node not in replied:
                rows.append({"round": run_round, "phase": "train", "node_id": node,
                             "site": self.names.get(node, f"node-{node}"), "error": "dropped out of the SecAgg+ round"})
        return sorted(rows, key=lambda row: row["site"])


@dataclass
class SecAggResult:
    arrays: ArrayRecord  # the final global state, keyed like the initial state dict
    round_times: dict[int, float]  # seconds from sampling to the aggregate, per round
    rows: list[dict]  # per-site train rows of every round
    halted: list[int]  # rounds whose secure aggregation stopped (too many dropouts): global unchanged


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


def run_secagg(grid: Grid, context: Context, settings: Settings, initial: Mapping[str, torch.Tensor],
               config: Mapping[str, Any], *, on_round: OnRound | None = None, first_round: int = 1,
               num_rounds: int | None = None, sign: Sign | None = None, names: dict[int, str] | None = None,
               timeout: float | None = None, **secagg: Any) -> SecAggResult:
    """Run rounds `first_round .. num_rounds` (default: num-server-rounds) of FedAvg under SecAgg+.

    Args:
        context: the ServerApp's context (wrapped in a LegacyContext; its state holds the rounds').
        initial: the state dict the sites start from (the encoder, or the whole model).
        config: the fit config every site gets (legacy scalars: int, float, str, bytes, bool);
            `server-round`, `array-keys`, the SecAgg+ bounds and, with `sign(state, round)`, the
            `encoder-signature` of the state sent are added.
        on_round: called after each round with (round, global state keyed like `initial`, its
            RoundRecord: per-site train rows, whether it was aggregated, seconds); a halted round
            leaves the global unchanged.
        names: node id -> site name, to name sites that drop out (updated from the replies).
        timeout: seconds each SecAgg+ stage waits for replies (None: until all replied or failed).
        **secagg: overrides of `secagg_settings` (num_shares, reconstruction_threshold,
            max_weight, clipping_range) and `SecAggPlusWorkflow`'s other arguments; a
            `quantization_range` given here is used as is, for every round.
    """
    last = settings.federation.num_server_rounds if num_rounds is None else num_rounds
    fed = settings.federation
    params = secagg_settings(settings, context.run_config) | secagg
    keys, parameters = to_legacy(initial)
    reference = [np.asarray(initial[k].detach().cpu()) for k in keys]
    result = SecAggResult(from_legacy(keys, reference), {}, [], [])
    if last < first_round:
        return result

    def fit_config(run_round: int, sent: dict[str, torch.Tensor]) -> dict:
        extra = {"encoder-signature": sign(sent, run_round)} if sign else {}
        return {**config, **extra, "server-round": run_round, ARRAY_KEYS: json.dumps(keys),
                MAX_WEIGHT: float(params["max_weight"]), CLIPPING_RANGE: float(params["clipping_range"])}

    strategy = SecAggFedAvg(keys, reference, fit_config, {} if names is None else names, offset=first_round - 1,
                            fraction_fit=fed.fraction_train, min_fit_clients=fed.min_train_nodes,
                            min_available_clients=fed.min_train_nodes, initial_parameters=parameters)

    def end_of_round(_: Grid, ctx: Context) -> None:  # DefaultWorkflow's evaluate step
        run_round = first_round - 1 + int(ctx.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        record = strategy.rounds.get(run_round, RoundRecord(started=time.monotonic()))
        if not record.aggregated:
            result.halted.append(run_round)
            if not record.rows:  # the workflow halted before aggregate_fit: a row for every sampled site
                record.rows = [{"round": run_round, "phase": "train", "node_id": node,
                                "site": strategy.names.get(node, f"node-{node}"), "error": "SecAgg+ round halted"}
                               for node in record.sampled]
            log(WARNING, "SecAgg+ round %s halted: the global state is unchanged", run_round)
        record.ended = record.ended or time.monotonic()
        result.round_times[run_round] = record.seconds
        arrays = ctx.state.array_records[MAIN_PARAMS_RECORD]
        result.arrays = from_legacy(keys, [arrays[str(i)].numpy() for i in range(len(keys))])
        result.rows += record.rows
        if on_round is not None:
            on_round(run_round, result.arrays, record)

    workflow_args = {k: v for k, v in params.items() if k not in ("num_shares", "reconstruction_threshold")}
    secagg_workflow = SecAggPlusWorkflow(params["num_shares"], params["reconstruction_threshold"],
                                         timeout=timeout, **workflow_args)
    if "quantization_range" not in params:
        def adapt(sites: int) -> None:
            secagg_workflow.quantization_range = quantization_range(sites)
            log(INFO, "SecAgg+: %d sites sampled, quantisation range 2**%d", sites,
                secagg_workflow.quantization_range.bit_length() - 1)
        strategy.on_sample = adapt
    workflow = DefaultWorkflow(fit_workflow=secagg_workflow, evaluate_workflow=end_of_round)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=last - first_round + 1, round_timeout=timeout),
                           strategy=strategy)
    log(INFO, "SecAgg+ rounds %s..%s: %s shares, threshold %s, max weight %s, clipping range %s", first_round,
        last, params["num_shares"], params["reconstruction_threshold"], params["max_weight"], params["clipping_range"])
    workflow(grid, legacy)
    return result


def run_secagg_rounds(strategy, grid: Grid, state, out_dir: Path, num_rounds: int,
                      train_config: ConfigRecord, evaluate_config: ConfigRecord,
                      evaluate_due: Callable[[int], bool], parts: dict, timeout: float,
                      sign: Sign | None = None, *, context: Context, settings: Settings, fedavg):
    """`server.rounds.run_rounds` with each round's training under SecAgg+; returns the final RunState.

    Same arguments, plus the ServerApp's `context`, the `settings` and `fedavg` (the
    `server.strategy.EncoderFedAvg` whose per-site log and round times the rounds go to).
    `strategy` (fedavg or a wrapper) only evaluates; its training methods are not used. After
    every phase the RunState is checkpointed as run_rounds does, so `resume` works the same. A
    round with fewer usable replies than min-train-nodes raises TooFewSites before its checkpoint,
    as EncoderFedAvg does; dropouts within SecAgg+'s threshold and above that minimum complete it.
    """
    from server.strategy import TooFewSites

    if settings.privacy.dp != "none":
        raise ValueError(f"secagg with dp={settings.privacy.dp!r} is not supported: central DP clips each site's "
                         "plain update, which SecAgg+ hides from the server; local DP's ε account lives in the "
                         "plain round loop (server.privacy)")
    if state.random_state is not None:
        random.setstate(state.random_state)
    for name, part in parts.items():
        if name in state.parts:
            part.load_state_dict(state.parts[name])

    def checkpoint(current, **changes):
        new = replace(current, **changes, random_state=random.getstate(),
                      parts={name: part.state_dict() for name, part in parts.items()})
        new.save(out_dir)
        return new

    def evaluate(current, server_round: int):
        config = evaluate_config
        if sign:
            config = ConfigRecord({**config, "encoder-signature": sign(current.arrays, server_round)})
        messages = strategy.configure_evaluate(server_round, ArrayRecord(wire.pack(current.arrays)), config, grid)
        strategy.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))
        return checkpoint(current, evaluated=True)

    if state.round and not state.evaluated and evaluate_due(state.round):
        state = evaluate(state, state.round)
    current = [state]

    def on_round(server_round: int, arrays: ArrayRecord, record: RoundRecord) -> None:
        _log_rows(fedavg.log, record.rows)
        usable = sum("error" not in row for row in record.rows) if record.aggregated else 0
        if usable < fedavg.min_train_nodes:
            missing = sorted(row["site"] for row in record.rows if "error" in row)
            raise TooFewSites(f"round {server_round} (train, SecAgg+): {usable} sites aggregated, at least "
                              f"{fedavg.min_train_nodes} needed (min-train-nodes); missing: {', '.join(missing) or 'none'}")
        fedavg.round_times[server_round] = record.seconds
        current[0] = checkpoint(current[0], round=server_round, evaluated=False, arrays=arrays.to_torch_state_dict())
        if evaluate_due(server_round):
            current[0] = evaluate(current[0], server_round)

    run_secagg(grid, context, settings, state.arrays, dict(train_config), on_round=on_round,
               first_round=state.round + 1, num_rounds=num_rounds, sign=sign, names=fedavg.log.names,
               timeout=timeout)
    return current[0]


def _log_rows(site_log, rows: list[dict]) -> None:
    """Add train rows to a `server.strategy.SiteLog` as its `add` does (sorted, rewritten, errors printed)."""
    for row in rows:
        if "error" in row:
            print(f"round {row['round']} (train): no usable reply from {row['site']}: {row['error']}", flush=True)
    site_log.rows += rows
    site_log.rows.sort(key=lambda r: (r["round"], r["phase"] != "train", r["site"]))
    write_json(site_log.path, site_log.rows)
