"""FedAvg over encoder arrays that keeps per-site rows and checkpoints every round.

Flower's History keeps only aggregates, so each reply's metrics are recorded with its site.
Replies are sorted by site before aggregation: they arrive in completion order, and a fixed
order makes the float sums, and so whole runs, reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from shared.checkpoint import write_atomic, write_json


def site_of(msg: Message) -> str:
    """The site a reply names in its 'site' ConfigRecord (the node id when it names none)."""
    record = msg.content.config_records.get("site") if not msg.has_error() else None
    return str(record["name"]) if record and "name" in record else f"node-{msg.metadata.src_node_id}"


class SiteLog:
    """Per-site, per-round metric rows, rewritten atomically to `path` after every round."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def add(self, server_round: int, phase: str, replies: list[Message]) -> None:
        for msg in replies:
            row = {"round": server_round, "phase": phase, "site": site_of(msg), "node_id": msg.metadata.src_node_id}
            if msg.has_error():
                row["error"] = msg.error.reason
            else:
                row |= dict(next(iter(msg.content.metric_records.values())))
                row |= {k: v for k, v in msg.content.config_records.get("site", {}).items() if k != "name"}
            self.rows.append(row)
        write_json(self.path, self.rows)


class EncoderFedAvg(FedAvg):
    """FedAvg weighted by each site's training windows, over the encoder arrays the sites send.

    Args:
        out_dir: where `global_encoder.pt` (after every round) and `per_site.json` are written.
        num_rounds: total rounds, so the last one is always evaluated.
        evaluate_every: evaluate every k rounds (0: only after the last round).
        model_args: stored with each checkpoint so the encoder can be rebuilt.
        **kwargs: FedAvg's own arguments (fractions, minimum nodes).
    """

    def __init__(self, out_dir: str | Path, num_rounds: int, evaluate_every: int, model_args: dict, **kwargs):
        super().__init__(**kwargs)
        self.out_dir = Path(out_dir)
        self.num_rounds, self.evaluate_every = num_rounds, evaluate_every
        self.model_args = model_args
        self.log = SiteLog(self.out_dir / "per_site.json")
        self.round_times: dict[int, float] = {}
        self._round_start = time.monotonic()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round_start = time.monotonic()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = sorted(replies, key=site_of)
        self.log.add(server_round, "train", replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            payload = {"model_args": self.model_args, "encoder": arrays.to_torch_state_dict(), "round": server_round}
            write_atomic(self.out_dir / "global_encoder.pt", lambda f: torch.save(payload, f))
        self.round_times[server_round] = time.monotonic() - self._round_start
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        due = server_round == self.num_rounds or (self.evaluate_every and server_round % self.evaluate_every == 0)
        return super().configure_evaluate(server_round, arrays, config, grid) if due else []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = sorted(replies, key=site_of)
        self.log.add(server_round, "evaluate", replies)
        return super().aggregate_evaluate(server_round, replies)
