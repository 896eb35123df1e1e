"""The Grid the ServerApp talks through: Flower's own, waiting for replies with a short poll.

Flower 1.41's deployment Grid (`flwr.superlink.grid.http_grid.HttpGrid.send_and_receive`) sleeps
3 s between pulls for replies, so every phase of a deployed round took a multiple of 3 s whatever
the sites did. `ShortPollGrid` hands every call to the Grid Flower gave the ServerApp and replaces
only `send_and_receive`, pulling every `reply-poll` seconds (run config; default 0.2).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class ShortPollGrid(Grid):
    def __init__(self, grid: Grid, poll: float):
        if poll <= 0:
            raise ValueError(f"reply-poll must be positive, not {poll}")
        self.grid, self.poll = grid, poll

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push `messages`, then pull replies every `poll` seconds until all came or `timeout` passed."""
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while True:
            pulled = list(self.pull_messages(waiting))
            replies += pulled
            waiting -= {m.metadata.reply_to_message_id for m in pulled}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                return replies
            time.sleep(self.poll)
