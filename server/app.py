"""ServerApp: loads (or pretrains) the shared encoder and runs encoder-only FedAvg rounds.

Writes to `out-dir`: `global_encoder.pt` after every round, `per_site.json` (every reply's
metrics with its site) and, at the end, `summary.json` (the per-site results table).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from shared.results import site_table
from server.strategy import EncoderFedAvg
from shared.checkpoint import write_json
from shared.config import Settings, to_config
from shared.model import count_parameters, state_bytes
from shared.pretrain import initial_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = Settings.from_config(context.run_config)
    fed = settings.federation
    random.seed(fed.seed)  # Flower samples nodes with `random`
    torch.manual_seed(fed.seed)
    torch.set_num_threads(1)  # beside the simulation's actors, more threads only contend
    if fed.exchange not in ("encoder", "model"):
        raise ValueError(f"exchange must be 'encoder' or 'model', not {fed.exchange!r}")
    out = Path(fed.out_dir)
    started = time.monotonic()
    model, origin = initial_model(settings)
    pretrain_seconds = time.monotonic() - started

    strategy = EncoderFedAvg(
        out, fed.num_server_rounds, fed.evaluate_every, model.args.to_dict(),
        fraction_train=fed.fraction_train, fraction_evaluate=1.0,
        min_train_nodes=fed.min_train_nodes, min_evaluate_nodes=fed.min_train_nodes,
        min_available_nodes=fed.min_train_nodes,
    )
    config = {"model-args": json.dumps(model.args.to_dict())}
    encoder = model.encoder.state_dict()
    shared = encoder if fed.exchange == "encoder" else model.state_dict()
    strategy.start(grid=grid, initial_arrays=ArrayRecord(shared), num_rounds=fed.num_server_rounds,
                   train_config=ConfigRecord(config), evaluate_config=ConfigRecord(config))

    write_json(out / "summary.json", {
        "config": {**to_config(settings.model), **to_config(settings.train), **to_config(settings.data),
                   **to_config(fed), **to_config(settings.site)},
        "encoder": {"origin": origin, "parameters": count_parameters(model.encoder),
                    "update_bytes": state_bytes(encoder), "head_parameters": count_parameters(model.head)},
        "seconds": {"initial_encoder": pretrain_seconds, "rounds": strategy.round_times,
                    "total": time.monotonic() - started},
        "sites": site_table(strategy.log.rows),
    })
