"""The round loop, checkpointed after every phase so a stopped run resumes where it ended.

Flower's `Strategy.start` counts rounds from 1 and keeps its state in memory. This loop drives
the same strategy methods (configure and aggregate, train and evaluate; any wrapper around them)
from any round, and after each phase atomically writes `global_encoder.pt` (what sites and the
forecast command load) and `server_state.pt`: the global arrays, the last completed round and
whether it was evaluated, the run key under which sites keep their heads, Python's random state
(Flower samples nodes with it), the state of each stateful part, and the run config the run was
started with. Sites seed their training by round and keep their heads per round (client.site),
so a resumed run ends with the same encoder as an uninterrupted one.
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


def run_rounds(strategy, grid: Grid, state: RunState, out_dir: Path, num_rounds: int,
               train_config: ConfigRecord, evaluate_config: ConfigRecord,
               evaluate_due: Callable[[int], bool], parts: dict[str, Stateful], timeout: float,
               sign: Callable[[dict[str, torch.Tensor], int], bytes] | None = None) -> RunState:
    """Train (and evaluate where due) rounds `state.round + 1 .. num_rounds`; returns the final state.

    Resuming a run whose last round's evaluation did not complete runs that evaluation first.
    Messages carry the arrays packed (shared.wire; `train_config` and `evaluate_config` name their
    layout). Given `sign(arrays, server_round)`, every train and evaluate message carries
    `encoder-signature`, its named arrays signed for its round (shared.signing).
    """
    if state.random_state is not None:
        random.setstate(state.random_state)
    for name, part in parts.items():
        if name in state.parts:
            part.load_state_dict(state.parts[name])

    def checkpoint(**changes) -> RunState:
        new = replace(state, **changes, random_state=random.getstate(),
                      parts={name: part.state_dict() for name, part in parts.items()})
        new.save(out_dir)
        return new

    def configure(configure_phase, config: ConfigRecord, server_round: int):
        """The strategy's messages sending the current arrays, their signature for this round added if `sign`."""
        if sign:
            config = ConfigRecord({**config, "encoder-signature": sign(state.arrays, server_round)})
        return configure_phase(server_round, ArrayRecord(pack(state.arrays)), config, grid)

    def evaluate(server_round: int) -> RunState:
        messages = configure(strategy.configure_evaluate, evaluate_config, server_round)
        strategy.aggregate_evaluate(server_round, grid.send_and_receive(messages, timeout=timeout))
        return checkpoint(evaluated=True)

    if state.round and not state.evaluated and evaluate_due(state.round):
        state = evaluate(state.round)
    for server_round in range(state.round + 1, num_rounds + 1):
        messages = configure(strategy.configure_train, train_config, server_round)
        arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages, timeout=timeout))
        state = checkpoint(round=server_round, evaluated=False, arrays=unpack(arrays, layout_of(state.arrays)))
        if evaluate_due(server_round):
            state = evaluate(server_round)
    return state
