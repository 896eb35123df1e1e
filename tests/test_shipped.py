"""Shipped pretrained encoders: remade bit for bit by their command, refused when altered, loaded by default
for runs of their model arguments, and small enough for Flower to package."""

import json

import pytest
import torch

import server.pretrain
import shared.pretrain
from shared.config import Settings
from shared.pretrain import SHIPPED_DIR, initial_model, read_shipped, shipped_for
from tests.conftest import TINY

SHORT = [f"{key}={value}" for key, value in TINY.items() if key not in ("demo-sites", "demo-length", "val-size",
                                                                        "test-size", "stride", "num-server-rounds",
                                                                        "min-train-nodes")]


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(shared.pretrain, "SHIPPED_DIR", tmp_path)
    monkeypatch.setattr(server.pretrain, "SHIPPED_DIR", tmp_path)
    return tmp_path


def _ship(name: str) -> dict:
    assert server.pretrain.main(["--ship", name, *sum((["--set", s] for s in SHORT), [])]) == 0
    return json.loads((shared.pretrain.SHIPPED_DIR / f"{name}.json").read_text())


def test_the_command_remakes_a_shipped_encoder_bit_for_bit_and_runs_load_it(shipped_dir):
    first, second = _ship("a"), _ship("b")
    assert first["sha256"] == second["sha256"] and first["weights"] == second["weights"]
    assert first["meta"]["command"].startswith("python -m server.pretrain --ship a")
    assert first["meta"]["recipe"] == shared.pretrain.RECIPE
    settings = Settings.from_config(TINY)
    assert shipped_for(settings.model) == shipped_dir / "a.json"
    model, meta = initial_model(settings)
    assert meta["source"] == str(shipped_dir / "a.json") and meta["sha256"] == first["sha256"]
    shipped, _ = read_shipped(shipped_dir / "a.json")
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in shipped.encoder.state_dict().items())
    # init = pretrain pretrains anew instead (here: the same recipe, so the same weights, from the cache)
    _, fresh = initial_model(Settings.from_config({**TINY, "init": "pretrain", "cache-dir": str(shipped_dir / "c")}))
    assert fresh["source"].startswith(str(shipped_dir / "c"))
    assert shipped_for(Settings.from_config({**TINY, "d-model": 32}).model) is None  # other arguments: none


def test_an_altered_shipped_encoder_is_refused_with_its_name(shipped_dir):
    payload = _ship("a")
    weights = bytearray(payload["weights"].encode())
    weights[10] = ord("A") if weights[10] != ord("A") else ord("B")
    path = shipped_dir / "a.json"
    path.write_text(json.dumps({**payload, "weights": weights.decode()}))
    with pytest.raises(ValueError, match=r"a\.json: not a usable shipped checkpoint \(.*SHA-256"):
        read_shipped(path)


@pytest.mark.parametrize("path", sorted(SHIPPED_DIR.glob("*.json")), ids=lambda p: p.name)
def test_each_committed_checkpoint_loads_matches_its_digest_and_fits_a_flower_package(path):
    assert path.stat().st_size <= 1024 * 1024  # Flower packages files of at most 1 MB
    model, meta = read_shipped(path)
    assert meta["recipe"] == shared.pretrain.RECIPE and meta["command"].startswith("python -m server.pretrain")
    assert shipped_for(model.args) == path
