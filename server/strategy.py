"""Encoder aggregation that checks every site's update, keeps per-site rows and reports the sites
that did not answer or were rejected.

A train reply is aggregated only if its packed arrays fit the encoder sent that round, its values
are finite, its update is within `max-update-norm` and its `num-examples` is a believable count of
training windows (shared.updates); otherwise its row in per_site.json carries the reason, and the
round goes on without it. Flower's History keeps only aggregates, so each reply's metrics are
recorded with its site; sites may report different metric keys, so the aggregate metrics are only
counts. Replies are sorted by site before aggregation: they arrive in completion order, and a
fixed order makes the float sums, and so whole runs, reproducible. SecAgg+ rounds (server.secagg)
see only sums and cannot check one site's update.

With a roster of organizations (run config `roster`), a train or evaluate reply counts only if signed,
for its round and run, by the roster key of the site it names (shared.signing); any other is rejected
the same way, with the reason. SecAgg+ train rounds do not go through this check.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from shared import wire
from shared.checkpoint import write_json
from shared.config import FederationArgs
from shared.results import SiteEvaluation
from shared.signing import SIGNATURE, Reply, Roster, reply_records
from shared.updates import Rejected, State, aggregate, check_settings, check_update, training_windows, update_norm


class TooFewSites(RuntimeError):
    """Fewer sites sent a usable reply in a round than `min-train-nodes`."""


class SiteLog:
    """Per-site, per-round metric rows, rewritten atomically to `path` after every phase.

    A site is named by the 'site' ConfigRecord of its replies; a node that never answered is
    'node-<id>'. A sampled site that sent no usable reply gets a row with an `error`, also printed;
    a rejected reply's row keeps the metrics it sent beside the reason.
    """

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.names: dict[int, str] = {}  # node id -> site name, from earlier replies

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def site_of(self, reply: Message) -> str:
        """The site a reply (not an error) names, else the name its node gave before."""
        node = reply.metadata.src_node_id
        return str(reply.content.config_records.get("site", {}).get("name", self.name(node)))

    def add(self, server_round: int, phase: str, replies: list[Message], sent: list[Message],
            rejected: Mapping[int, str] | None = None, norms: Mapping[int, float] | None = None) -> None:
        """Record the replies to the messages `sent` in this phase, and a row for each silent node.

        `rejected` maps the node of each reply left out of aggregation to the reason; `norms` the node of
        each accepted train reply to its update's L2 norm (`update-norm`, what max-update-norm bounds).

        An error reply made by the SuperLink (e.g. node unavailable) comes from the SuperLink
        itself: its node is the one the replied-to message was sent to.
        """
        rejected, norms = rejected or {}, norms or {}
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
                metrics = dict(next(iter(msg.content.metric_records.values()), {}))
                row |= {"site": self.names[node], **metrics, **info}
                if node in rejected:
                    row["error"] = rejected[node]
                elif node in norms:
                    row["update-norm"] = norms[node]
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
    """Encoder aggregation over the arrays the sites send, each reply checked first (shared.updates).

    Args:
        out_dir: where `per_site.json` is written.
        federation: the settings `aggregation`, `trim-fraction`, `clip-update-norm`,
            `max-update-norm` and `max-train-windows` (the others are not read here).
        roster: the organizations admitted (run config `roster`); given, a train or evaluate reply
            counts only if signed, for its round and run, by the roster key of the site it names
            (shared.signing), once per site and round. None admits every reply: for trusted federations.
        **kwargs: FedAvg's own arguments (fractions, minimum nodes). A round whose usable
            replies are fewer than `min_train_nodes` raises TooFewSites.

    `accepted` holds the replies aggregated in the last training round, in site order.
    """

    def __init__(self, out_dir: str | Path, federation: FederationArgs = FederationArgs(),
                 roster: Roster | None = None, **kwargs):
        check_settings(federation)
        super().__init__(**kwargs)
        self.federation = federation
        self.roster = roster
        self._run_key = ""  # the run key the messages of the current phase were sent with
        self.log = SiteLog(Path(out_dir) / "per_site.json")
        self.round_times: dict[int, float] = {}
        self.first_windows: dict[str, int] = {}  # site -> training windows in its first accepted reply
        self.accepted: list[Message] = []
        self._round_start = time.monotonic()
        self._sent: dict[tuple[int, str], list[Message]] = {}
        self._layout: wire.Layout = []
        self._encoder: State = {}  # the encoder sent in this training round

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._round_start = time.monotonic()
        self._layout = wire.loads(str(config.get(wire.LAYOUT, "")))
        self._run_key = str(config.get("run-key", ""))
        self._encoder = wire.unpack(arrays, self._layout)
        return self._remember(server_round, "train", super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._run_key = str(config.get("run-key", ""))
        return self._remember(server_round, "evaluate",
                              super().configure_evaluate(server_round, arrays, config, grid))

    def _remember(self, server_round: int, phase: str, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._sent[server_round, phase] = messages  # the Grid sets their message ids when it sends them
        return messages

    def _record(self, server_round: int, phase: str, replies: list[Message],
                rejected: Mapping[int, str] | None = None, norms: Mapping[int, float] | None = None) -> None:
        """Log the phase's rows; TooFewSites if its usable replies are fewer than the phase's minimum."""
        rejected = rejected or {}
        self.log.add(server_round, phase, replies, self._sent.pop((server_round, phase), []), rejected, norms)
        usable = sum(not m.has_error() and m.metadata.src_node_id not in rejected for m in replies)
        minimum = self.min_train_nodes if phase == "train" else self.min_evaluate_nodes
        if usable < minimum:
            missing = [f"{r['site']} ({r['error']})" for r in self.log.missing()
                       if r["round"] == server_round and r["phase"] == phase]
            raise TooFewSites(f"round {server_round} ({phase}): {usable} sites answered, at least {minimum} "
                              f"needed (min-train-nodes); missing: {', '.join(missing) or 'none'}")

    def _admitted(self, server_round: int, phase: str, site: str, reply: Message, signers: set[str]) -> None:
        """With a roster: SignatureError unless `reply` is signed, for this round and run, by the roster key of
        the site it names (as `site` in the log too); Rejected if that site already replied in this phase."""
        if self.roster is None:
            return
        signature = reply.content.config_records.get(SIGNATURE, {})
        signer = str(signature.get("site", ""))
        self.roster.verify(Reply(self._run_key, server_round, phase, signer, reply_records(reply.content)),
                           signature.get("signature"))
        if "name" in reply.content.config_records.get("site", {}) and site != signer:
            raise Rejected(f"signed by {signer!r} but names itself {site!r}")
        if signer in signers:
            raise Rejected(f"{signer} already replied in this round (from another node)")
        signers.add(signer)

    def _check(self, server_round: int, site: str, reply: Message) -> tuple[State, int]:
        """A train reply's update and weight; Rejected (or ValueError from unpacking) with the reason."""
        if len(reply.content.array_records) != 1 or len(reply.content.metric_records) != 1:
            raise Rejected("a train reply must hold one ArrayRecord and one MetricRecord")
        (arrays,) = reply.content.array_records.values()
        (metrics,) = reply.content.metric_records.values()
        update = check_update(self._encoder, wire.unpack(arrays, self._layout), self.federation.max_update_norm)
        claimed = metrics.get("num-examples")
        windows = training_windows(claimed, self.first_windows.get(site), self.federation.max_train_windows)
        if windows < claimed:
            print(f"round {server_round} (train): {site} claims {claimed} training windows, more than its first "
                  f"{windows}; weighed as {windows}", flush=True)
        self.first_windows.setdefault(site, windows)
        return update, windows

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        answers = sorted(((self.log.site_of(m), m) for m in replies if not m.has_error()),
                         key=lambda answer: (answer[0], answer[1].metadata.src_node_id))
        accepted, updates, weights, rejected, signers, norms = [], [], [], {}, set(), {}
        for site, reply in answers:
            try:
                self._admitted(server_round, "train", site, reply, signers)
                update, windows = self._check(server_round, site, reply)
            except ValueError as exc:  # Rejected, or a packed array that does not fit the layout
                rejected[reply.metadata.src_node_id] = f"rejected: {exc}"
                continue
            accepted.append(reply)
            updates.append(update)
            weights.append(windows)
            norms[reply.metadata.src_node_id] = update_norm(update)
        self._record(server_round, "train", replies, rejected, norms)
        self.accepted = accepted
        self.round_times[server_round] = time.monotonic() - self._round_start
        if not accepted:
            return None, None
        fed = self.federation
        state = aggregate(self._encoder, updates, weights, fed.aggregation, fed.trim_fraction, fed.clip_update_norm)
        return (ArrayRecord(wire.pack(state, self._layout)),
                MetricRecord({"sites": len(accepted), "num-examples": sum(weights)}))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Each site's figures go to its rows (sites may report different keys); the aggregate is their count."""
        replies = list(replies)
        rejected, signers = {}, set()
        for reply in sorted((m for m in replies if not m.has_error()), key=lambda m: m.metadata.src_node_id):
            try:
                self._admitted(server_round, "evaluate", self.log.site_of(reply), reply, signers)
                _check_evaluation(reply)
            except ValueError as exc:
                rejected[reply.metadata.src_node_id] = f"rejected: {exc}"
        self._record(server_round, "evaluate", replies, rejected)
        usable = sum(not m.has_error() for m in replies) - len(rejected)
        return MetricRecord({"sites": usable}) if usable else None

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the log, the timings and the sites' first window counts."""
        return {"rows": self.log.rows, "names": self.log.names, "round_times": self.round_times,
                "first_windows": self.first_windows}

    def load_state_dict(self, state: dict) -> None:
        self.log.rows = list(state["rows"])
        self.log.names = {int(k): v for k, v in state["names"].items()}
        self.round_times = {int(k): v for k, v in state["round_times"].items()}
        self.first_windows = {str(k): int(v) for k, v in state["first_windows"].items()}


def _check_evaluation(reply: Message) -> None:
    """Rejected unless an evaluate reply's figures read back as a site's evaluation (or hold none: minimal
    reports), so one malformed reply cannot break the summary or the new-site prior."""
    row = {**dict(next(iter(reply.content.metric_records.values()), {})),
           **dict(reply.content.config_records.get("site", {}))}
    try:
        SiteEvaluation.from_row(row)
    except (KeyError, TypeError, ValueError) as exc:
        raise Rejected(f"malformed evaluation figures: {exc!r}") from exc
