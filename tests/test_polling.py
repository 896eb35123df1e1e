"""Shorter waits around Flower 1.41's hard-coded ones: the server's reply poll and the SuperNode's idle poll."""

import time

import pytest
from flwr.serverapp import Grid

from server.grid import ShortPollGrid


class SlowReplies(Grid):
    """A Grid whose replies to pushed messages appear one per pull, after `delay` empty pulls."""

    def __init__(self, delay: int):
        self.delay, self.pulls, self.pushed = delay, 0, []

    def set_run(self, run):
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return [1, 2]

    def push_messages(self, messages):
        self.pushed = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.pushed)

    def pull_messages(self, message_ids):
        self.pulls += 1
        if self.pulls <= self.delay or not self.pushed:
            return []
        reply = type("Reply", (), {})()
        reply.metadata = type("Meta", (), {"reply_to_message_id": self.pushed.pop(0)})()
        assert reply.metadata.reply_to_message_id in set(message_ids)
        return [reply]

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("ShortPollGrid must not call the wrapped grid's send_and_receive")


def test_replies_are_pulled_every_poll_until_all_came():
    inner = SlowReplies(delay=3)
    grid = ShortPollGrid(inner, poll=0.01)
    replies = grid.send_and_receive(["a", "b"], timeout=60)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0", "m1"]
    assert inner.pulls == 5  # 3 empty pulls, then one reply per pull; no pull after the last reply
    assert list(grid.get_node_ids()) == [1, 2]


def test_a_timeout_returns_the_replies_that_came():
    inner = SlowReplies(delay=10**9)
    started = time.monotonic()
    assert ShortPollGrid(inner, poll=0.01).send_and_receive(["a"], timeout=0.05) == []
    assert inner.pulls >= 2 and time.monotonic() - started < 5


def test_a_poll_must_be_positive():
    with pytest.raises(ValueError, match="reply-poll must be positive"):
        ShortPollGrid(SlowReplies(0), poll=0)


def test_the_supernode_loop_sleeps_at_most_the_poll(monkeypatch):
    from flwr.supernode import start_client_internal

    import client.supernode as launcher

    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)  # undone after the test
    slept = []
    launcher.shorten_waits(0.2)
    monkeypatch.setattr(time, "sleep", slept.append)
    start_client_internal.time.sleep(3)  # the idle wait after an empty pull
    start_client_internal.time.sleep(0.5)  # the wait for the ClientApp's reply
    start_client_internal.time.sleep(0.1)
    assert slept == [0.2, 0.2, 0.1]
    assert start_client_internal.time.monotonic is time.monotonic  # the rest of `time` is untouched


def test_the_supernode_launcher_refuses_another_flower(monkeypatch):
    import flwr

    import client.supernode as launcher

    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    with pytest.raises(SystemExit, match="checked against Flower 1.41.0, not 1.42.0"):
        launcher.shorten_waits(0.5)


@pytest.mark.parametrize("preset, expected", [(None, "0.1"), ("2.5", "2.5")])
def test_the_supernode_sets_its_superexec_poll_unless_the_environment_does(monkeypatch, preset, expected):
    from flwr.supernode import start_client_internal

    import client.supernode as launcher

    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)
    monkeypatch.setenv(launcher.SUPEREXEC_POLL, preset or "unset")  # restored after the test, set or not
    if preset is None:
        monkeypatch.delenv(launcher.SUPEREXEC_POLL)
    started = []
    monkeypatch.setattr(launcher, "flower_supernode", lambda: started.append(list(launcher.sys.argv)))
    monkeypatch.setattr(launcher.sys, "argv", list(launcher.sys.argv))
    launcher.main(["--poll", "0.5", "--superlink", "h:1"])
    assert started == [["flower-supernode", "--superlink", "h:1"]]
    assert launcher.os.environ[launcher.SUPEREXEC_POLL] == expected

