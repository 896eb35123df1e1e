"""Shared test helpers: tiny settings that train in seconds, Flower messages built by hand."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A run config small enough that a whole federated simulation takes seconds.
TINY = {
    "demo-sites": 3, "demo-length": 600,
    "lookback": 48, "horizon": 12, "lags": "1 24", "patch-len": 12, "patch-stride": 12,
    "d-model": 16, "n-heads": 2, "n-layers": 1, "d-ff": 32,
    "corpus-series": 40, "corpus-length": 200, "pretrain-epochs": 2,
    "max-epochs": 3, "steps-per-epoch": 5, "batch-size": 32,
    "val-size": 96, "test-size": 48, "stride": 12,
    "num-server-rounds": 2, "min-train-nodes": 2,
}


@pytest.fixture
def tiny_settings():
    from shared.config import Settings

    return Settings.from_config(TINY)


def flower_message(content, message_type: str = "train", src_node_id: int = 1, dst_node_id: int = 7):
    """A Message as a node would receive (or the server would get back), outside any runtime."""
    from flwr.app import Metadata
    from flwr.app.message import make_message
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, dst_node_id, 1
    metadata = Metadata(run_id=1, message_id=f"m{src_node_id}-{dst_node_id}", src_node_id=src_node_id,
                        dst_node_id=dst_node_id, reply_to_message_id="", group_id="1",
                        created_at=time.time(), ttl=3600, message_type=message_type)
    return make_message(metadata, content)


def encoder_content(encoder, config: dict):
    """A message's content as the server sends it: `encoder` packed (shared.wire), its layout in `config`."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict

    from shared import wire

    layout = wire.dumps(wire.layout_of(encoder))
    return RecordDict({"arrays": ArrayRecord(wire.pack(encoder)), "config": ConfigRecord({**config, wire.LAYOUT: layout})})
