"""FedAvg over encoder arrays that keeps per-site rows and reports the sites that did not answer.

Flower's History keeps only aggregates, so each reply's metrics are recorded with its site.
Replies are sorted by site before aggregation: they arrive in completion order, and a fixed
order makes the float sums, and so whole runs, reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from shared.checkpoint import write_json


class TooFewSites(RuntimeError):
    """Fewer sites answered a round than `min-train-nodes`."""


class SiteLog:
    """Per-site, per-round metric rows, rewritten atomically to `path` after every phase.

    A site is named by the 'site' ConfigRecord of its replies; a node that never answered is
    'node-<id>'. A sampled site that sent no usable reply gets a row with an `error`, also printed.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.names: dict[int, str] = {}  # node id -> site name, from earlier replies

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def add(self, server_round: int, phase: str, replies: list[Message], sent: list[Message]) -> None:
        """Record the replies to the messages `sent` in this phase, and a row for each silent node.

        An error reply made by the SuperLink (e.g. node unavailable) comes from the SuperLink
        itself: its node is the one the replied-to message was sent to.
        """
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent if m.metadata.message_id}
        rows, replied = [], set()
        for msg in replies:
            node = node_of.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            replied.add(node)
            row = {"round": server_round, "phase": phase, "node_id": node}
            if msg.has_error():
                row |= {"site": self.name(node), "error": msg.error.reason}
            else:
                info = dict(msg.content.config_records.get("site", {}))
                self.names[node] = str(info.pop("name", self.name(node)))
                row |= {"site": self.names[node], **dict(next(iter(msg.content.metric_records.values()))), **info}
            rows.append(row)
        for node in sorted({m.metadata.dst_node_id for m in sent} - replied):
            rows.append({"round": server_round, "phase": phase, "node_id": node, "site": self.name(node),
                         "error": "no reply within round-timeout"})
        for row in rows:
            if "error" in row:
                print(f"round {server_round} ({phase}): no usable reply from {row['site']}: {row['error']}",
                      flush=True)
        self.rows += rows
        self.rows.sort(key=lambda r: (r["round"], r["phase"] != "train", r["site"]))
        write_json(self.path, self.rows)

    def missing(self) -> list[dict]:
        """The rows of sampled sites that sent no usable reply."""
        return [r for r in self.rows if "error" in r]


class EncoderFedAvg(FedAvg):
    """FedAvg weighted by each site's training windows, over the encoder arrays the sites send.

    Args:
        out_dir: where `per_site.json` is written.
        **kwargs: FedAvg's own arguments (fractions, minimum nodes). A round whose usable
            replies are fewer than `min_train_nodes` raises TooFewSites.
    """

    def __init__(self, out_dir: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.log = SiteLog(Path(out_dir) / "per_site.json")
        self.round_times: dict[int, float] = {}
        self._round_start = time.monotonic()
        self._sent: dict[tuple[int, str], list[Message]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round_start = time.monotonic()
        return self._remember(server_round, "train", super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self._remember(server_round, "evaluate",
                              super().configure_evaluate(server_round, arrays, config, grid))

    def _remember(self, server_round: int, phase: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._sent[server_round, phase] = messages  # the Grid sets their message ids when it sends them
        return messages

    def _record(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        self.log.add(server_round, phase, replies, self._sent.pop((server_round, phase), []))
        usable = sorted((m for m in replies if not m.has_error()), key=lambda m: self.log.name(m.metadata.src_node_id))
        minimum = self.min_train_nodes if phase == "train" else self.min_evaluate_nodes
        if len(usable) < minimum:
            missing = sorted({r["site"] for r in self.log.missing() if r["round"] == server_round and r["phase"] == phase})
            raise TooFewSites(f"round {server_round} ({phase}): {len(usable)} sites answered, at least {minimum} "
                              f"needed (min-train-nodes); missing: {', '.join(missing) or 'none'}")
        return usable

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        result = super().aggregate_train(server_round, self._record(server_round, "train", replies))
        self.round_times[server_round] = time.monotonic() - self._round_start
        return result

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, self._record(server_round, "evaluate", replies))

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the log and timings."""
        return {"rows": self.log.rows, "names": self.log.names, "round_times": self.round_times}

    def load_state_dict(self, state: dict) -> None:
        self.log.rows = list(state["rows"])
        self.log.names = {int(k): v for k, v in state["names"].items()}
        self.round_times = {int(k): v for k, v in state["round_times"].items()}
