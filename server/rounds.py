"""The round loop, checkpointed after every phase so a stopped run resumes where it ended.

Flower's `Strategy.start` counts rounds from 1 and keeps its state in memory. `RoundLoop.run` drives
the same strategy methods (configure and aggregate, train and evaluate; any wrapper around them)
from any round, and after each phase atomically writes `global_encoder.pt` (what sites and the
forecast command load) and `server_state.pt`: the global arrays, the last completed round and
whether it was evaluated, the run key under which sites keep their heads, Python's random state
(Flower samples nodes with it), the state of each stateful part, and the run config the run was
started with. Sites seed their training by round and keep their heads per round (client.site),
so a resumed run ends with the same encoder as an uninterrupted one.

A round's training is a phase: a callable that, given the round and the current arrays, returns the
new arrays. The plain phase is the strategy's configure_train, send, aggregate_train; under SecAgg+
it is `server.secagg.SecAggTrain`. Evaluation is always the strategy's, with ordinary messages.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.checkpoint import write_atomic
from shared.wire import layout_of, pack, unpack

STATE_FILE = "server_state.pt"
ENCODER_FILE = "global_encoder.pt"
# settings a resumed run may change; any other change would make it a different experiment
RESUMABLE = {"num-server-rounds", "resume", "round-timeout", "reply-poll", "min-train-nodes", "wait-for-nodes"}


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class RunState:
    """Where a run stands after its last completed phase."""

    arrays: dict[str, torch.Tensor]
    config: dict
    model_args: dict
    run_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    round: int = 0  # last completed training round
    evaluated: bool = False  # whether that round's evaluation (if due) completed
    random_state: tuple | None = None
    parts: dict[str, dict] = field(default_factory=dict)

    def save(self, out_dir: Path) -> None:
        encoder = {"model_args": self.model_args, "encoder": self.arrays, "round": self.round}
        write_atomic(out_dir / ENCODER_FILE, lambda f: torch.save(encoder, f))
        write_atomic(out_dir / STATE_FILE, lambda f: torch.save(self.__dict__, f))

    @classmethod
    def load(cls, out_dir: Path, config: dict) -> RunState:
        """The checkpoint in `out_dir`, if `config` may continue it; clear errors otherwise."""
        path = out_dir / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"resume: no checkpoint {path}; start the run without resume")
        try:
            state = cls(**torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise ValueError(f"{path}: not a readable server checkpoint ({exc})") from exc
        changed = sorted(k for k in state.config.keys() | config.keys()
                         if k not in RESUMABLE and state.config.get(k) != config.get(k))
        if changed:
            raise ValueError(f"{path}: the run was started with other settings ({', '.join(changed)}); "
                             f"resume with the same settings, or start a new run in another out-dir")
        return state


Arrays = dict[str, torch.Tensor]
TrainPhase = Callable[[int, Arrays], Arrays]  # (round, arrays sent) -> the arrays after the round
Sign = Callable[[Arrays, int], bytes]  # (arrays, round) -> their signature for that round of this run


@dataclass
class RoundLoop:
    """The rounds of one run, and what they need.

    Args:
        strategy: configures and aggregates evaluation (and training, for the plain phase).
        grid: the ServerApp's Grid.
        out_dir: where the checkpoints go.
        num_rounds: the last round to train.
        config: every message's config; names the packed arrays' layout (shared.wire).
        evaluate_due: whether a round is followed by an evaluation.
        timeout: seconds a phase waits for replies.
        parts: stateful parts (a SiteLog-keeping strategy, a DP account) checkpointed with each phase.
        sign: given, every message carries `encoder-signature`, the arrays it sends signed for its
            round and the run (shared.signing).
        train: the train phase; None: the strategy's configure_train, send, aggregate_train.
    """

    strategy: Strategy
    grid: Grid
    out_dir: Path
    num_rounds: int
    config: ConfigRecord
    evaluate_due: Callable[[int], bool]
    timeout: float
    parts: dict[str, Stateful] = field(default_factory=dict)
    sign: Sign | None = None
    train: TrainPhase | None = None

    def run(self, state: RunState) -> RunState:
        """Train (and evaluate where due) rounds `state.round + 1 .. num_rounds`; returns the final state.

        Resuming a run whose last round's evaluation did not complete runs that evaluation first.
        """
        if state.random_state is not None:
            random.setstate(state.random_state)
        for name, part in self.parts.items():
            if name in state.parts:
                part.load_state_dict(state.parts[name])
        train = self.train or self.plain_train
        if state.round and not state.evaluated and self.evaluate_due(state.round):
            state = self.evaluate(state)
        for server_round in range(state.round + 1, self.num_rounds + 1):
            arrays = train(server_round, state.arrays)
            state = self.checkpoint(state, round=server_round, evaluated=False, arrays=arrays)
            if self.evaluate_due(server_round):
                state = self.evaluate(state)
        return state

    def plain_train(self, server_round: int, arrays: Arrays) -> Arrays:
        """The plain train phase: the strategy's messages sent, their replies aggregated."""
        messages = self.messages(self.strategy.configure_train, server_round, arrays)
        replies = self.grid.send_and_receive(messages, timeout=self.timeout)
        aggregated, _ = self.strategy.aggregate_train(server_round, replies)
        return unpack(aggregated, layout_of(arrays))

    def evaluate(self, state: RunState) -> RunState:
        """The evaluation of `state`'s round, on its arrays."""
        messages = self.messages(self.strategy.configure_evaluate, state.round, state.arrays)
        self.strategy.aggregate_evaluate(state.round, self.grid.send_and_receive(messages, timeout=self.timeout))
        return self.checkpoint(state, evaluated=True)

    def messages(self, configure_phase, server_round: int, arrays: Arrays):
        """The strategy's messages sending `arrays` packed, their signature for this round added if `sign`."""
        config = self.config
        if self.sign:
            config = ConfigRecord({**config, "encoder-signature": self.sign(arrays, server_round)})
        return configure_phase(server_round, ArrayRecord(pack(arrays)), config, self.grid)

    def checkpoint(self, state: RunState, **changes) -> RunState:
        """`state` with `changes`, the random state and every part's state, saved to out_dir."""
        new = replace(state, **changes, random_state=random.getstate(),
                      parts={name: part.state_dict() for name, part in self.parts.items()})
        new.save(self.out_dir)
        return new
