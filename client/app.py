"""ClientApp: a thin adapter between Flower messages and `client.site.Site`.

A reply carries the encoder's arrays (train only; packed as the message's, shared.wire), a MetricRecord and a ConfigRecord naming the
site (and, after evaluation, its best alone option and what its guard serves); with `reports = "minimal"`
(run config, or the site's own node config) only the arrays and the FedAvg weight. The head, the data
and the local-only model stay in the site's state folder.

With a trusted key (`verify-key`), a site refuses any encoder the coordinator did not sign for this round
(SignatureError) before it reads or writes its state; Flower turns the exception into an error reply whose
reason the server records in per_site.json. With a `state-key` in its node config, the site seals its state.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.privacy import privacy_mod
from client.secagg import secagg_mod
from client.site import Site
from shared import wire
from shared.checkpoint import check_finite
from shared.config import Settings
from shared.model import ModelArgs
from shared.sealing import load_state_key
from shared.signing import SIGNATURE, Reply, reply_records, sign_reply, verify_encoder
from shared.sites import open_slice

app = ClientApp()


def open_site(context: Context, settings: Settings) -> Site:
    """This node's site.

    Deployment: the node config names `data-path` (the site's own file), `state-dir` and
    optionally `site-name` (when the file holds several sites). Simulation: the site at position
    `partition-id` among the sorted site names of the run's data, its state under `state-dir`.
    Either way, a node config `state-key` (a file from `python -m client.state_key`) seals the state. The
    site's rows are kept in its state folder, so later messages read the data file only when it changed
    (shared.sites.open_slice).
    """
    node = context.node_config
    torch.set_num_threads(int(node.get("torch-threads", 1)))
    key = load_state_key(node["state-key"]) if node.get("state-key") else None
    covariates = settings.model.futr_exog
    if "data-path" in node:
        if not node.get("state-dir"):
            raise ValueError("node config has data-path but no state-dir: name the folder for this site's state")
        data = replace(settings.data, data_path=str(node["data-path"]))
        name, frame, state_dir = open_slice(data, covariates, str(node["state-dir"]), key,
                                            name=node.get("site-name") or None)
    else:
        root = settings.federation.state_dir or Path(settings.federation.out_dir) / "sites"
        name, frame, state_dir = open_slice(settings.data, covariates, root, key, per_site=True,
                                            index=int(node["partition-id"]),
                                            expected_sites=int(node["num-partitions"]))
    return Site.open(name, frame, state_dir, settings.data, settings.site, key)


def trusted_key(context: Context, settings: Settings) -> str:
    """The coordinator's public key file this site verifies encoders with; "" accepts unsigned ones.

    Deployment: the node config's `verify-key`, so a server cannot choose the key its sites trust (a run
    config `verify-key` is refused there). Simulation: the run config's.
    """
    node = context.node_config
    if "verify-key" in node:
        return str(node["verify-key"])
    if "data-path" not in node:
        return settings.privacy.verify_key
    if settings.privacy.verify_key:
        raise ValueError("the run config sets verify-key, but a site trusts only the key in its own node config: "
                         "add verify-key='/path/to/signing.pub' to this SuperNode's --node-config")
    return ""


def _unpack(msg: Message, context: Context, settings: Settings
            ) -> tuple[ModelArgs, dict[str, torch.Tensor], int, str]:
    """The message's model arguments, named arrays (shared.wire), round and run key; verified first
    if the site trusts a key."""
    config = msg.content["config"]
    if wire.LAYOUT not in config:
        raise ValueError(f"the message has no {wire.LAYOUT}: the server runs another version of this App")
    arrays = wire.unpack(msg.content["arrays"], wire.loads(str(config[wire.LAYOUT])))
    server_round, run_key = int(config["server-round"]), str(config["run-key"])
    if key := trusted_key(context, settings):
        verify_encoder(key, arrays, server_round, config.get("encoder-signature"), run_key=run_key)
    args = ModelArgs.from_dict(json.loads(str(config["model-args"])))
    return args, arrays, server_round, run_key


def reports_mode(context: Context, settings: Settings) -> str:
    """What this site reports: the run config's `reports`, unless its node config sets its own."""
    mode = str(context.node_config.get("reports", settings.privacy.reports))
    if mode not in ("full", "minimal"):
        raise ValueError(f"reports must be 'full' or 'minimal', not {mode!r}")
    return mode


def _reply(msg: Message, context: Context, site: Site, metrics: dict[str, float], arrays: dict | None = None,
           info: dict[str, str] | None = None, reports: str = "full") -> Message:
    """The reply; with reports "minimal" only what aggregation needs: the arrays and, for a train
    reply, the FedAvg weight (an evaluate reply carries a constant weight of 1, no name, no errors).

    With a `reply-key` in the node config (its organization's Ed25519 key: only ever the site's own
    config), the reply carries a SIGNATURE record: the site's name and its signature over every other
    record, the round and the run (shared.signing.Reply), which a coordinator with a roster checks.
    """
    if reports == "minimal":
        metrics = {"num-examples": metrics["num-examples"] if arrays is not None else 1}
        site_info = {}
    else:
        site_info = {"name": site.name, **(info or {})}
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord(site_info)})
    if arrays is not None:
        content["arrays"] = ArrayRecord(wire.pack(arrays, wire.loads(str(msg.content["config"][wire.LAYOUT]))))
    if key := context.node_config.get("reply-key"):
        config = msg.content["config"]
        signed = Reply(str(config["run-key"]), int(config["server-round"]), msg.metadata.message_type, site.name,
                       reply_records(content))
        content[SIGNATURE] = ConfigRecord({"site": site.name, "signature": sign_reply(str(key), signed)})
    return Message(content=content, reply_to=msg)


@app.train(mods=[secagg_mod, privacy_mod])  # SecAgg+ first: the DP mod sees plain messages
def train(msg: Message, context: Context) -> Message:
    settings = Settings.from_config(context.run_config)
    if settings.privacy.dp == "local" and context.node_config.get("reply-key"):
        raise ValueError("reply-key with dp = local: the DP mod noises the reply after it is signed, so the "
                         "coordinator would refuse it; run local DP without a roster")
    args, encoder, server_round, run = _unpack(msg, context, settings)
    check_finite(encoder, f"the {settings.federation.exchange} received for round {server_round}")
    site = open_site(context, settings)
    sent, metrics = site.train_round(args, settings.train, encoder, server_round, settings.federation.exchange, run)
    return _reply(msg, context, site, metrics, arrays=sent, reports=reports_mode(context, settings))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings = Settings.from_config(context.run_config)
    args, encoder, server_round, run = _unpack(msg, context, settings)
    check_finite(encoder, f"the {settings.federation.exchange} received for round {server_round}")
    site = open_site(context, settings)
    evaluation = site.evaluate_round(args, settings.train, encoder, server_round, settings.federation.exchange, run)
    metrics, info = evaluation.to_reply()
    return _reply(msg, context, site, metrics, info=info, reports=reports_mode(context, settings))
