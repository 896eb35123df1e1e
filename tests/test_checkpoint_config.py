"""Checkpoints rebuild their model, writes are atomic, encoders load only when they match;
the run config in pyproject.toml and the typed settings agree."""

import os
import stat
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from shared.checkpoint import (check_finite, load_encoder, load_model, load_torch, read_json, save_model, write_atomic,
                               write_json)
from shared.config import DataArgs, FederationArgs, PrivacyArgs, Settings, SiteArgs, read_args, to_config
from shared.model import Forecaster, ModelArgs
from shared.sealing import VERSIONS, generate_state_key
from shared.config import TrainArgs

ARGS = ModelArgs(lookback=48, horizon=12, patch_len=12, patch_stride=12, d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, lags=(1, 24))


def test_checkpoint_round_trip(tmp_path):
    model = Forecaster(ARGS)
    save_model(tmp_path / "m.pt", model, {"round": 3})
    loaded, meta = load_model(tmp_path / "m.pt")
    assert loaded.args == ARGS and meta == {"round": 3}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_unreadable_checkpoint_names_the_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_model(tmp_path / "bad.pt")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def crash(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_atomic(path, crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temporary file left


def test_load_encoder_requires_an_exact_match():
    model, other = Forecaster(ARGS), Forecaster(ModelArgs(**{**ARGS.to_dict(), "d_model": 32, "d_ff": 64}))
    loaded = load_encoder(model, Forecaster(ARGS).encoder.state_dict())
    assert loaded == sorted(model.encoder.state_dict())
    with pytest.raises(ValueError, match="wrong shape"):
        load_encoder(model, other.encoder.state_dict())
    partial = dict(list(model.encoder.state_dict().items())[1:])
    with pytest.raises(ValueError, match="missing"):
        load_encoder(model, partial)
    with pytest.raises(ValueError, match="unexpected"):
        load_encoder(model, {**model.encoder.state_dict(), "head.mix": torch.zeros(2, 12)})


def test_pyproject_run_config_matches_the_typed_defaults():
    """One source of truth: every key in pyproject.toml has the dataclass default, and vice versa."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    config = pyproject["tool"]["flwr"]["app"]["config"]
    defaults = {}
    for cls in (ModelArgs, TrainArgs, DataArgs, FederationArgs, SiteArgs, PrivacyArgs):
        defaults |= to_config(cls())
    assert config == defaults


def test_read_args_casts_and_names_bad_keys():
    settings = Settings.from_config({"lr": "0.01", "lags": "1, 7", "num-server-rounds": 3})
    assert settings.train.lr == 0.01 and settings.model.lags == (1, 7)
    assert settings.federation.num_server_rounds == 3
    with pytest.raises(ValueError, match="'lookback'"):
        read_args(ModelArgs, {"lookback": "a week"})
    assert {f.name for f in fields(FederationArgs)} >= {"num_server_rounds", "seed"}


def test_pretrain_command_writes_a_rebuildable_checkpoint(tmp_path):
    from server.pretrain import main

    tiny = ["lookback=48", "horizon=12", "lags=1 24", "patch-len=12", "patch-stride=12", "d-model=16",
            "n-heads=2", "n-layers=1", "d-ff=32", "corpus-series=20", "corpus-length=128", "pretrain-epochs=1",
            "steps-per-epoch=3", "seed=5"]
    argv = ["--out", str(tmp_path / "enc.pt")]
    for pair in tiny:
        argv += ["--set", pair]
    assert main(argv) == 0
    model, meta = load_model(tmp_path / "enc.pt")
    assert (model.args.lookback, model.args.horizon, model.args.lags) == (48, 12, (1, 24))
    assert meta["corpus"] == {"generator": "kernel_synth", "n_series": 20, "length": 128, "seed": 5,
                                   "public_path": "", "windows_per_series": 64}


def test_pretrained_encoder_is_cached(tmp_path):
    from shared.pretrain import cached_pretrain

    args = ARGS
    train = TrainArgs(max_epochs=1, steps_per_epoch=2)
    first, _, path = cached_pretrain(tmp_path, args, train, 10, 128, 0)
    stamp = path.stat().st_mtime_ns
    second, _, again = cached_pretrain(tmp_path, args, train, 10, 128, 0)
    assert again == path and path.stat().st_mtime_ns == stamp  # loaded, not retrained
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    _, _, other = cached_pretrain(tmp_path, args, train, 10, 128, 1)  # another seed, another file
    assert other != path


def test_pretraining_twice_with_one_seed_makes_the_same_weights_in_another_process(tmp_path):
    """Whatever the process drew from torch's global generator before (a fresh process starts it
    at a random seed), the same seed and thread count make the same checkpoint (the thread count
    changes the order of float sums)."""
    import subprocess
    import sys

    from shared.pretrain import pretrain

    train = TrainArgs(max_epochs=1, steps_per_epoch=2)
    torch.manual_seed(12345)
    here, _ = pretrain(ARGS, train, 10, 128, 0)
    torch.rand(7)
    again, _ = pretrain(ARGS, train, 10, 128, 0)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in here.state_dict().items())
    code = (f"import sys, torch; torch.set_num_threads({torch.get_num_threads()}); from shared.pretrain import pretrain; from shared.config import TrainArgs; "
            "from tests.test_checkpoint_config import ARGS; "
            "torch.save(pretrain(ARGS, TrainArgs(max_epochs=1, steps_per_epoch=2), 10, 128, 0)[0].state_dict(), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "other.pt")], check=True, cwd=Path(__file__).parents[1])
    other = torch.load(tmp_path / "other.pt", weights_only=True)
    assert all(torch.equal(v, other[k]) for k, v in here.state_dict().items())


def test_atomic_files_and_new_folders_are_private(tmp_path):
    (tmp_path / "runs").mkdir(mode=0o755)
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "runs" / "report.json", lambda f: f.write(b"{}"))
        write_json(tmp_path / "sites" / "a" / "guard.json", {"round": 1})
        save_model(tmp_path / "sites" / "a" / "model.pt", Forecaster(ARGS))
        key = generate_state_key(tmp_path / "keys" / "state.key")
        write_json(tmp_path / "sealed" / "alone.json", {}, key)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o755  # an existing folder is left as it is
    for name in ("runs/report.json", "sites/a/guard.json", "sites/a/model.pt", "sealed/alone.json",
                 f"sealed/{VERSIONS}"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    for name in ("sites", "sites/a", "keys", "sealed"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700, name


def test_corrupt_state_files_name_the_file(tmp_path):
    (tmp_path / "guard.json").write_text('{"round": 1 "serve": "federated"}')
    with pytest.raises(ValueError, match=r"guard\.json: not valid JSON \(Expecting ',' delimiter"):
        read_json(tmp_path / "guard.json")
    (tmp_path / "heads.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ValueError, match=r"heads\.pt: not a readable torch file"):
        load_torch(tmp_path / "heads.pt")
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt: not a model checkpoint \(KeyError\('model_args'\)\)"):
        load_model(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_check_finite_names_the_arrays():
    state = Forecaster(ARGS).encoder.state_dict()
    check_finite(state, "encoder of round 2")
    first, last = list(state)[0], list(state)[-1]
    state[first][0] = float("nan")
    state[last].view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match=rf"^encoder of round 2: 2 array\(s\) hold NaN or infinite values: "
                                         rf"\['{first}', '{last}'\]$"):
        check_finite(state, "encoder of round 2")


def test_checked_settings_refuse_unknown_keys_and_read_known_ones():
    from shared.config import Settings

    with pytest.raises(ValueError, match="unknown run-config key lookbak"):
        Settings.checked({"lookbak": 24})
    assert Settings.checked({"lookback": "48", "patch-len": 12, "lags": "1 24"}).model.lookback == 48
