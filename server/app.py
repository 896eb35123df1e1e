"""ServerApp: loads (or pretrains) the shared encoder and runs encoder-only FedAvg rounds.

With `sign-key` (the coordinator's Ed25519 private key), every encoder it sends is signed for its round and run.
With `roster` (the organizations' public keys), only replies signed by a listed site count (server.strategy).
With `dp = "central"` and `dp-epsilon`, the noise is calibrated here so that num-server-rounds spend that ε.
With `secagg = true`, training rounds run under SecAgg+ (server.secagg): the server sees only the sum.

Writes to `out-dir`: `global_encoder.pt` and `server_state.pt` after every round (server.rounds;
`resume = true` continues from them), `per_site.json` (every reply's metrics with its site, and
the sites that did not answer) and, at the end, `summary.json` (the per-site results table).
"""

from __future__ import annotations

import json
import random
import time
from functools import partial
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from server.grid import ShortPollGrid
from server.privacy import DpStrategy, calibrated, wrap_strategy
from server.rounds import STATE_FILE, RoundLoop, RunState
from server.secagg import SecAggTrain
from server.strategy import EncoderFedAvg
from shared import wire
from shared.checkpoint import write_json
from shared.config import FederationArgs, PrivacyArgs, Settings, to_config
from shared.guard import evidence_warning
from shared.model import Forecaster, ModelArgs, count_parameters, state_bytes
from shared.pretrain import initial_model
from shared.results import new_site_prior, site_table
from shared.signing import Roster, load_private_key, sign_encoder

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_config(context.run_config)
    fed = settings.federation
    grid = ShortPollGrid(grid, fed.reply_poll) if isinstance(grid, Grid) else grid  # not the tests' fakes
    random.seed(fed.seed)  # Flower samples nodes with `random`
    torch.manual_seed(fed.seed)
    torch.set_num_threads(1)  # beside the simulation's actors, more threads only contend
    if fed.exchange not in ("encoder", "model"):
        raise ValueError(f"exchange must be 'encoder' or 'model', not {fed.exchange!r}")
    if fed.min_train_nodes < 1:
        raise ValueError("min-train-nodes must be at least 1")
    privacy = calibrated(settings.privacy, fed.num_server_rounds)  # bad DP settings fail here, before pretraining
    refuse_combinations(fed, privacy)
    sign_key = settings.privacy.sign_key
    signing_key = load_private_key(sign_key) if sign_key else None  # a bad key fails here
    roster = Roster.load(privacy.roster) if privacy.roster else None  # and a bad roster
    out = Path(fed.out_dir)
    config = dict(context.run_config)
    started = time.monotonic()
    if fed.resume:
        state = RunState.load(out, config)
        if privacy.dp_epsilon and state.config.get("num-server-rounds") != config.get("num-server-rounds"):
            raise ValueError(f"{out / STATE_FILE}: dp-epsilon set the noise for the run's num-server-rounds "
                             f"({state.config.get('num-server-rounds')}); resume with the same num-server-rounds")
        model_args = ModelArgs.from_dict(state.model_args)
        origin, pretrain_seconds = f"resumed after round {state.round}", 0.0
    else:
        if (out / STATE_FILE).exists():
            raise ValueError(f"{out / STATE_FILE}: this out-dir holds a run; set resume=true to continue it, "
                             "or choose another out-dir")
        model, origin = initial_model(settings)
        pretrain_seconds = time.monotonic() - started
        model_args = model.args
        shared = model.encoder.state_dict() if fed.exchange == "encoder" else model.state_dict()
        state = RunState(arrays=shared, config=config, model_args=model_args.to_dict())
    print(f"run {state.run_key}: rounds {state.round + 1}..{fed.num_server_rounds}", flush=True)
    if warning := evidence_warning(settings.data.val_size, model_args.horizon, settings.data.stride):
        print(f"warning: {warning}", flush=True)

    fedavg = EncoderFedAvg(
        out, fed, fraction_train=fed.fraction_train, fraction_evaluate=1.0,
        min_train_nodes=fed.min_train_nodes, min_evaluate_nodes=fed.min_train_nodes,
        min_available_nodes=fed.min_train_nodes, roster=roster,
    )
    strategy = wrap_strategy(fedavg, privacy, num_sites=max(fed.wait_for_nodes, fed.min_train_nodes))
    dp = strategy if isinstance(strategy, DpStrategy) else None
    if state.round == 0:
        wait_for_nodes(grid, fed.wait_for_nodes or fed.min_train_nodes)
    message_config = {"model-args": json.dumps(state.model_args), "run-key": state.run_key,
                      wire.LAYOUT: wire.dumps(wire.layout_of(state.arrays))}

    def evaluate_due(server_round: int) -> bool:
        every = fed.evaluate_every
        return (server_round == fed.num_server_rounds and fed.final_evaluate) or bool(every and server_round % every == 0)

    sign = partial(sign_encoder, signing_key, run_key=state.run_key) if signing_key else None
    secagg = (SecAggTrain(grid, context, settings, fedavg, message_config, sign=sign, timeout=fed.round_timeout)
              if settings.privacy.secagg else None)
    state = RoundLoop(strategy, grid, out, fed.num_server_rounds, ConfigRecord(message_config), evaluate_due,
                      parts={"strategy": fedavg} | ({"privacy": dp} if dp else {}), timeout=fed.round_timeout,
                      sign=sign, train=secagg).run(state)

    model = Forecaster(model_args)
    write_json(out / "summary.json", {
        "config": {**to_config(settings.model), **to_config(settings.train), **to_config(settings.data),
                   **to_config(fed), **to_config(settings.site)},
        "run_key": state.run_key,
        "encoder": {"origin": origin, "parameters": count_parameters(model.encoder),
                    "update_bytes": state_bytes(model.encoder.state_dict()),
                    "head_parameters": count_parameters(model.head)},
        "seconds": {"initial_encoder": pretrain_seconds, "rounds": fedavg.round_times,
                    "total": time.monotonic() - started},
        "sites": site_table(fedavg.log.rows),
        "missing": fedavg.log.missing(),
        "new_site_prior": {str(h): prior.to_dict() for h, prior in new_site_prior(fedavg.log.rows).items()},
        "privacy": privacy_summary(privacy, dp),
    })


def refuse_combinations(fed: FederationArgs, privacy: PrivacyArgs) -> None:
    """ValueError naming the settings that cannot apply with secagg or central DP: SecAgg+ gives the
    server only the weighted sum of unsigned masked updates, whose weights travel masked (each site
    clips its own update to clip-update-norm before masking); central DP aggregates its own clipped
    mean (each reply is still checked)."""
    if not (privacy.secagg or privacy.dp == "central"):
        return
    refused = [key for key, on in (("aggregation", fed.aggregation != "fedavg"),
                                   ("clip-update-norm", fed.clip_update_norm and privacy.dp == "central"),
                                   ("max-update-norm", fed.max_update_norm and privacy.secagg),
                                   ("max-train-windows", fed.max_train_windows and privacy.secagg),
                                   ("roster", privacy.roster and privacy.secagg)) if on]
    if refused:
        raise ValueError(f"{', '.join(refused)} cannot apply with {'secagg' if privacy.secagg else 'dp = central'}: "
                         "SecAgg+ gives the server only the weighted sum of unsigned masked updates with masked "
                         "weights, central DP its own clipped mean")


def privacy_summary(privacy: PrivacyArgs, dp: DpStrategy | None) -> dict:
    """The privacy settings in force (key paths left out; dp_noise as calibrated for dp_epsilon, if set) and
    the ε spent after each round."""
    summary = {"secagg": privacy.secagg, "signed": bool(privacy.sign_key), "reports": privacy.reports,
               "dp": privacy.dp}
    if dp is not None:
        summary |= {"dp_clip": privacy.dp_clip, "dp_noise": privacy.dp_noise, "dp_epsilon": privacy.dp_epsilon,
                    "dp_delta": privacy.dp_delta,
                    "dp_epsilon_budget": privacy.dp_epsilon_budget, "epsilon_by_round": dp.epsilon_by_round,
                    "epsilon": dp.epsilon(), "stopped_before_round": dp.stopped_before,
                    "update_norms_by_round": dp.update_norms_by_round}
    return summary


def wait_for_nodes(grid: Grid, count: int) -> None:
    """Block until `count` sites are connected (the first round samples from those)."""
    while (connected := len(list(grid.get_node_ids()))) < count:
        print(f"waiting for sites: {connected} of {count} connected", flush=True)
        time.sleep(1)
