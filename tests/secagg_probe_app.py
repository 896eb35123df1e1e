"""Test-only ServerApp and ClientApp around the real handlers, with recorders (not part of the App).

tests/test_secagg.py copies this file into a temporary copy of the App as `client/secagg_probe.py`
(the App's FAB holds only shared/, server/ and client/) and points the copy's components at
`client.secagg_probe:server_app` / `:client_app`. Extra run-config keys of that copy:

  probe-dir   where the records go (absolute path)
  probe-fail  "PARTITION:ROUND": that site fails while training in that round ("" = none)

Records in probe-dir:
  r{round}-{site}-plain.pt    what the train handler returned (arrays, num-examples), before SecAgg+
  r{round}-{site}-masked.pt   the masked vector the site sent instead (list of integer arrays)
  global-r{round}.pt          the global state after the round, as the server aggregated it
  traffic.jsonl               one line per message a site served: stage, bytes in and out, seconds
  summary.json                the App's summary.json, and the wall time of its main
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp

from client.app import evaluate, train
from client.privacy import privacy_mod
from client.secagg import is_secagg, secagg_mod
from shared import wire
from shared.checkpoint import write_json
from shared.config import Settings

SECAGG_CONFIGS, MASKED = "secaggplus_configs", "masked_params"


def _probe(context: Context) -> Path:
    return Path(str(context.run_config["probe-dir"]))


# ------------------------------------------------------------------ ClientApp


def traffic(msg: Message, context: Context, call_next) -> Message:
    """Outermost mod: bytes each way and time per message; keeps the masked vectors sent."""
    stage = str(msg.content.config_records[SECAGG_CONFIGS]["stage"]) if is_secagg(msg) else "plain"
    size_in = recorddict_to_proto(msg.content).ByteSize()
    started = time.monotonic()
    reply = call_next(msg, context)
    seconds = time.monotonic() - started
    size_out = 0 if reply.has_error() else recorddict_to_proto(reply.content).ByteSize()
    configs = {} if reply.has_error() else reply.content.config_records.get(SECAGG_CONFIGS, {})
    if MASKED in configs:
        site = str(reply.content.config_records["fitres.metrics"]["site"])
        masked = [bytes_to_ndarray(b) for b in configs[MASKED]]
        torch.save(masked, _probe(context) / f"r{msg.metadata.group_id}-{site}-masked.pt")
    line = {"type": msg.metadata.message_type, "round": msg.metadata.group_id, "stage": stage,
            "node": context.node_config.get("partition-id"), "bytes_in": size_in, "bytes_out": size_out,
            "seconds": seconds, "error": reply.has_error()}
    with open(_probe(context) / "traffic.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return reply


def plain(msg: Message, context: Context, call_next) -> Message:
    """Innermost mod: injects the configured failure; keeps what the handler returned."""
    server_round = int(msg.content["config"]["server-round"])
    if str(context.run_config.get("probe-fail", "")) == f"{context.node_config.get('partition-id')}:{server_round}":
        raise RuntimeError(f"probe: site fails while training in round {server_round}")
    reply = call_next(msg, context)
    if Settings.from_config(context.run_config).privacy.secagg:
        site = str(reply.content["site"]["name"])
        layout = wire.loads(str(msg.content["config"][wire.LAYOUT]))
        record = {"arrays": wire.unpack(reply.content["arrays"], layout), "site": site,
                  "num-examples": int(reply.content["metrics"]["num-examples"])}
        torch.save(record, _probe(context) / f"r{server_round}-{site}-plain.pt")
    return reply


client_app = ClientApp()
client_app.train(mods=[traffic, secagg_mod, plain, privacy_mod])(train)
client_app.evaluate(mods=[traffic])(evaluate)


# ------------------------------------------------------------------ ServerApp


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """server/app.py's own main, keeping every round's global state."""
    import server.app as real
    import server.rounds as rounds

    probe = _probe(context)
    save = rounds.RunState.save

    def save_and_keep(state, out_dir):
        save(state, out_dir)
        if state.round and not state.evaluated:
            torch.save(state.arrays, probe / f"global-r{state.round}.pt")

    rounds.RunState.save = save_and_keep
    settings = Settings.from_config(context.run_config)
    started = time.monotonic()
    real.main(grid, context)
    write_json(probe / "summary.json", {"secagg": settings.privacy.secagg, "total_seconds": time.monotonic() - started,
                                        "app_summary": json.loads((Path(settings.federation.out_dir) / "summary.json").read_text())})
