"""Run the App's ServerApp and ClientApp in this one process, without any Flower process.

`LocalGrid` hands each message to the ClientApp as a node would receive it (serialised and parsed
back, as on the wire), times every handler call and counts the bytes each way: the same
computation as a federation, run one site after another. Tests use it to drive the real apps
quickly (and, replacing one node's ClientApp with a wrapper around it, to play a faulty site);
`studies.overhead` uses its timings as the training part of a round, and `studies.secagg_cost` its
byte counts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from types import SimpleNamespace

from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.app.message import make_message
from flwr.common.constant import ErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app


def wire(content: RecordDict) -> tuple[RecordDict, int]:
    """`content` as the other side receives it, and its size in bytes on the wire."""
    proto = recorddict_to_proto(content)
    return recorddict_from_proto(proto), proto.ByteSize()


class LocalGrid:
    """A Grid whose nodes are simulated sites (node config `partition-id`) answering in this process.

    Each node keeps its Context (and so its `state`) across messages, as a SuperNode does within a
    run; an exception in the ClientApp becomes an error reply, as in Flower's runtimes.

    Args:
        run_config: the run config every ClientApp sees.
        num_sites: nodes 1..num_sites, node k being partition k - 1.
        node_config: extra node-config entries per node id.
        apps: a ClientApp callable (message, context) -> reply per node id, in place of the App's:
            a test wraps the App to tamper with one site's reply or make it fail.
    """

    def __init__(self, run_config: dict, num_sites: int, node_config: dict[int, dict] | None = None,
                 apps: dict[int, Callable[[Message, Context], Message]] | None = None):
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # the server's messages need them
        self.run = SimpleNamespace(run_id=1)  # what Flower's legacy workflows (SecAgg+) read of a Grid
        self.contexts = {
            node: Context(run_id=1, node_id=node, state=RecordDict(), run_config=run_config,
                          node_config={"partition-id": node - 1, "num-partitions": num_sites,
                                       **(node_config or {}).get(node, {})})
            for node in range(1, num_sites + 1)}
        self.apps = apps or {}
        self.messages: list[dict] = []  # one row per message: round, phase, node, seconds, bytes each way

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def answer(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        content, down = wire(msg.content)
        metadata = Metadata(run_id=1, message_id=uuid.uuid4().hex, src_node_id=0, dst_node_id=node,
                            reply_to_message_id="", group_id=msg.metadata.group_id, created_at=time.time(),
                            ttl=3600, message_type=msg.metadata.message_type)
        received = make_message(metadata, content)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, node, 1  # the ClientApp reads these
        started = time.perf_counter()
        try:
            reply = self.apps.get(node, client_app)(received, self.contexts[node])
        except Exception as exc:  # noqa: BLE001 - as flwr's runtime reports a ClientApp's exception
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>"),
                            reply_to=received)
        seconds = time.perf_counter() - started
        TaskIdentity.node_id = 0
        up = 0
        if not reply.has_error():
            content, up = wire(reply.content)
            reply = make_message(reply.metadata, content)
        config = msg.content.config_records.get("config", {})  # SecAgg+ stages carry their round as group_id
        self.messages.append({"round": int(config.get("server-round", msg.metadata.group_id or 0)), "node": node,
                              "phase": msg.metadata.message_type, "seconds": seconds,
                              "bytes_down": down, "bytes_up": up, "error": reply.has_error()})
        return reply

    def send_and_receive(self, messages, timeout: float | None = None) -> list[Message]:
        return [self.answer(msg) for msg in messages]
