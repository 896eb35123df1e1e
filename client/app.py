"""ClientApp: a thin adapter between Flower messages and `client.site.Site`.

A reply carries the encoder's arrays (train only), a MetricRecord and a ConfigRecord naming the
site (and, after evaluation, its best alone option and what its guard serves). The head, the data and the local-only model stay in the site's state folder.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import Site
from shared.sites import read_sites, select_site
from shared.config import Settings
from shared.model import ModelArgs

app = ClientApp()


def open_site(context: Context, settings: Settings) -> Site:
    """This node's site.

    Deployment: the node config names `data-path` (the site's own file), `state-dir` and
    optionally `site-name` (when the file holds several sites). Simulation: the site at position
    `partition-id` among the sorted site names of the run's data, its state under `state-dir`.
    """
    node = context.node_config
    torch.set_num_threads(int(node.get("torch-threads", 1)))
    if "data-path" in node:
        if not node.get("state-dir"):
            raise ValueError("node config has data-path but no state-dir: name the folder for this site's state")
        data = replace(settings.data, data_path=str(node["data-path"]))
        name, frame = select_site(read_sites(data), data.data_path, name=node.get("site-name") or None)
        state_dir = Path(str(node["state-dir"]))
    else:
        name, frame = select_site(read_sites(settings.data), settings.data.data_path or "built-in demo data",
                                  index=int(node["partition-id"]), expected_sites=int(node["num-partitions"]))
        state_dir = Path(settings.federation.state_dir or Path(settings.federation.out_dir) / "sites") / name
    return Site.open(name, frame, state_dir, settings.data, settings.site)


def _unpack(msg: Message) -> tuple[ModelArgs, dict[str, torch.Tensor], int, str]:
    config = msg.content["config"]
    args = ModelArgs.from_dict(json.loads(str(config["model-args"])))
    return args, msg.content["arrays"].to_torch_state_dict(), int(config["server-round"]), str(config["run-key"])


def _reply(msg: Message, site: Site, metrics: dict[str, float], arrays: dict | None = None,
           info: dict[str, str] | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site.name, **(info or {})})})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings = Settings.from_config(context.run_config)
    site = open_site(context, settings)
    args, encoder, server_round, run = _unpack(msg)
    sent, metrics = site.train_round(args, settings.train, encoder, server_round, settings.federation.exchange, run)
    return _reply(msg, site, metrics, arrays=sent)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings = Settings.from_config(context.run_config)
    site = open_site(context, settings)
    args, encoder, server_round, run = _unpack(msg)
    metrics, info = site.evaluate_round(args, settings.train, encoder, server_round, settings.federation.exchange, run)
    return _reply(msg, site, metrics, info=info)
