"""Benchmarks only: the App with one simulated site sending a scaled encoder update.

`simulations.compare --attack times-K` runs the federated arms from a copy of the App whose ClientApp
(this module's `app`) is the App's own, except that the site at partition 0 (the first site by name)
replaces each train reply's encoder by `received + K × (its honest update)`. The copy's pyproject.toml
names this ClientApp and adds its two run-config keys; the product App never reads them. What such an
update does to each aggregation (and what the server's update checks catch) is measured with it:
docs/benchmarks.md, "A hostile site".
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client.app import app as product_app
from shared import wire

SCALE, PARTITION = "attack-scale", "attack-partition"

app = ClientApp()


def parse(spec: str) -> float:
    """K of "times-K" (K > 1)."""
    match = re.fullmatch(r"times-(\d+(?:\.\d+)?)", spec)
    if not match or float(match.group(1)) <= 1:
        raise ValueError(f"--attack {spec!r}: expected times-K with K > 1, e.g. times-100")
    return float(match.group(1))


def scaled(received: torch.Tensor, returned: torch.Tensor, scale: float) -> torch.Tensor:
    """The flat encoder a site sends when it scales its honest update by `scale`."""
    return (received.double() + scale * (returned.double() - received.double())).to(returned.dtype)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = product_app(msg, context)
    attacker = int(context.node_config["partition-id"]) == int(context.run_config[PARTITION])
    if attacker and reply.has_content():
        received = torch.from_numpy(msg.content["arrays"][wire.KEY].numpy().copy())
        returned = torch.from_numpy(reply.content["arrays"][wire.KEY].numpy().copy())
        reply.content["arrays"] = ArrayRecord({wire.KEY: scaled(received, returned, float(context.run_config[SCALE]))})
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return product_app(msg, context)


def app_copy(app_dir: Path, into: Path) -> Path:
    """A copy of the App at `into` whose ClientApp is this module's, with its two run-config keys."""
    if into.exists():
        shutil.rmtree(into)
    for part in ("shared", "server", "client"):
        shutil.copytree(app_dir / part, into / part, ignore=shutil.ignore_patterns("__pycache__"))
    text = (app_dir / "pyproject.toml").read_text()
    text = text.replace('clientapp = "client.app:app"', 'clientapp = "simulations.attack:app"', 1)
    text = text.replace("[tool.flwr.app.config]\n", f"[tool.flwr.app.config]\n{SCALE} = 1.0\n{PARTITION} = 0\n", 1)
    if "simulations.attack:app" not in text or SCALE not in text:
        raise RuntimeError(f"{app_dir / 'pyproject.toml'}: its clientapp or config section is not where expected")
    (into / "pyproject.toml").write_text(text)
    return into
