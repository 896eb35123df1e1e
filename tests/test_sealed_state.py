"""Encryption at rest: with a node config state-key, every file a site keeps is sealed, rounds and the forecast
command read them back, and a missing or wrong key is a clear error naming the file."""

import io
import json
import stat
import zipfile

import pandas as pd
import pytest
import torch
from flwr.app import Context, RecordDict

from client.app import app as client_app
from client.forecast import main as forecast
from client.state_key import main as new_key
from shared.checkpoint import load_model, read_file, read_json, save_model, write_json
from shared.config import Settings
from shared.model import Forecaster
from shared.sealing import VERSIONS, SealError, generate_state_key, is_sealed, load_state_key
from shared.sites import read_sites
from tests.conftest import TINY, encoder_content, flower_message
from tests.test_rounds import SITES, FakeGrid, _run

STATE_FILES = ("model.pt", "heads.pt", "guard.json", "alone.json", "local_only.pt")


@pytest.fixture(scope="module")
def sealed_run(tmp_path_factory):
    """One round (train and evaluate) of two sites, each sealing its state with its own key."""
    tmp = tmp_path_factory.mktemp("sealed")
    keys = {node: tmp / f"node{node}.key" for node in SITES}
    for path in keys.values():
        generate_state_key(path)
    grid = FakeGrid(tmp / "sites", node_config={node: {"state-key": str(path)} for node, path in keys.items()})
    out = _run(tmp, "run", grid, **{"num-server-rounds": 1})
    data = tmp / "series.csv"
    read_sites(Settings.from_config(grid.run_config).data).to_csv(data, index=False)
    return {"out": out, "sites": tmp / "sites", "keys": keys, "run_config": grid.run_config, "data": data}


def test_no_state_file_is_readable_without_the_key(sealed_run):
    rows = json.loads((sealed_run["out"] / "per_site.json").read_text())
    assert len(rows) == 4 and not any("error" in r for r in rows)  # a train and an evaluate round worked
    for site, node in (("site00", 11), ("site01", 12)):
        key = load_state_key(sealed_run["keys"][node])
        for name in STATE_FILES:
            path = sealed_run["sites"] / site / name
            blob, plain = path.read_bytes(), read_file(path, key)
            assert is_sealed(blob) and plain[:32] not in blob and plain[-32:] not in blob
            if name.endswith(".json"):
                with pytest.raises(ValueError):
                    json.loads(blob)
            else:
                assert zipfile.is_zipfile(io.BytesIO(plain)) and not zipfile.is_zipfile(path)  # torch.save: a zip
                with pytest.raises(Exception):
                    torch.load(path, weights_only=True)
    guard = read_json(sealed_run["sites"] / "site00" / "guard.json", load_state_key(sealed_run["keys"][11]))
    assert guard["serve"] in ("federated", "alone_best") and guard["round"] == 1


def _evaluate(sealed_run, key_node):
    """Site00 evaluates the run's encoder again, its state key read from node `key_node`'s config."""
    run_key = torch.load(sealed_run["out"] / "server_state.pt", weights_only=True)["run_key"]
    encoder = torch.load(sealed_run["out"] / "global_encoder.pt", weights_only=True)["encoder"]
    config = {"model-args": json.dumps(Settings.from_config(sealed_run["run_config"]).model.to_dict()),
              "server-round": 2, "run-key": run_key}
    msg = flower_message(encoder_content(encoder, config), "evaluate", 0, 11)
    context = Context(run_id=1, node_id=11, state=RecordDict(),
                      node_config={"partition-id": SITES[11], "num-partitions": 2,
                                   "state-key": str(sealed_run["keys"][key_node])},
                      run_config={**sealed_run["run_config"], "state-dir": str(sealed_run["sites"])})
    return client_app(msg, context)


def test_another_round_reads_the_sealed_state_back(sealed_run):
    folder = sealed_run["sites"] / "site00"
    local_only = (folder / "local_only.pt").read_bytes()
    with pytest.raises(SealError, match=r"site00/heads.pt \(versions.sealed beside it\): cannot unseal as 'versions.sealed': wrong state key"):
        _evaluate(sealed_run, key_node=12)  # site01's key
    reply = _evaluate(sealed_run, key_node=11)
    assert not reply.has_error()
    assert (folder / "local_only.pt").read_bytes() == local_only  # alone.json was read back: nothing retrained
    key = load_state_key(sealed_run["keys"][11])
    assert read_json(folder / "guard.json", key)["round"] == 2
    assert is_sealed((folder / "guard.json").read_bytes())


@pytest.mark.parametrize("serve, choice, model_file", [("federated", "naive", "model.pt"),
                                                       ("alone_best", "local_only", "local_only.pt")])
def test_forecast_reads_a_sealed_state_with_its_key(sealed_run, tmp_path, serve, choice, model_file):
    state, key_path = sealed_run["sites"] / "site01", sealed_run["keys"][12]
    key = load_state_key(key_path)
    guard = read_json(state / "guard.json", key)
    write_json(state / "guard.json", {**guard, "serve": serve, "alone_choice": choice}, key)
    out = tmp_path / "f.csv"
    args = ["--state-dir", str(state), "--data", str(sealed_run["data"]), "--site-name", "site01", "--out", str(out)]
    assert forecast([*args, "--state-key", str(key_path)]) == 0
    model, _ = load_model(state / model_file, key)
    table, data = pd.read_csv(out), pd.read_csv(sealed_run["data"])
    series = data.loc[data["site"] == "site01", "unique_id"].nunique()
    assert len(table) == series * model.args.horizon and table["y_hat"].notna().all()


def test_forecast_without_or_with_a_wrong_key_names_the_file(sealed_run, tmp_path, capsys):
    state = sealed_run["sites"] / "site01"
    args = ["--state-dir", str(state), "--data", str(sealed_run["data"]), "--site-name", "site01",
            "--out", str(tmp_path / "f.csv")]
    assert forecast(args) == 1
    assert f"{state / 'guard.json'}: sealed with a site's state key" in capsys.readouterr().err
    assert forecast([*args, "--state-key", str(sealed_run["keys"][11])]) == 1
    assert (f"{state / 'guard.json'} ({VERSIONS} beside it): cannot unseal as '{VERSIONS}': wrong state key"
            in capsys.readouterr().err)
    assert not (tmp_path / "f.csv").exists()


def test_plain_and_sealed_files_do_not_pass_for_each_other(tmp_path):
    key = generate_state_key(tmp_path / "state.key")
    model = Forecaster(Settings.from_config(TINY).model)
    save_model(tmp_path / "plain" / "model.pt", model)
    with pytest.raises(SealError, match="plain/model.pt: not sealed"):
        load_model(tmp_path / "plain" / "model.pt", key)
    save_model(tmp_path / "sealed" / "model.pt", model, key=key)
    with pytest.raises(SealError, match="sealed/model.pt: sealed with a site's state key"):
        load_model(tmp_path / "sealed" / "model.pt")
    loaded, _ = load_model(tmp_path / "sealed" / "model.pt", key)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_state_key_command(tmp_path, capsys):
    path = tmp_path / "site" / "state.key"
    assert new_key([str(path)]) == 0
    assert len(load_state_key(path)) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"state-key='{path}'" in capsys.readouterr().out
    assert new_key([str(path)]) == 2
    assert "a state key is already there" in capsys.readouterr().err


def test_an_older_copy_or_another_folders_file_is_refused(tmp_path):
    key = generate_state_key(tmp_path / "state.key")
    site, other, record = tmp_path / "site", tmp_path / "other", tmp_path / "site" / VERSIONS
    write_json(site / "guard.json", {"round": 1}, key)
    old_guard, old_record = (site / "guard.json").read_bytes(), record.read_bytes()
    write_json(site / "guard.json", {"round": 2}, key)
    write_json(other / "guard.json", {"round": 9}, key)
    (site / "guard.json").write_bytes(old_guard)
    with pytest.raises(SealError, match=r"site/guard.json: holds write 1 of its folder, but versions.sealed records "
                                        r"write 2: an older copy"):
        read_json(site / "guard.json", key)
    write_json(site / "heads.json", {"round": 2}, key)
    record.write_bytes(old_record)  # the record put back too: a file written since is then too new for it
    assert read_json(site / "guard.json", key) == {"round": 1}
    with pytest.raises(SealError, match=r"site/heads.json: holds write 3 of its folder, but versions.sealed records "
                                        r"write 0"):
        read_json(site / "heads.json", key)
    (site / "guard.json").write_bytes((other / "guard.json").read_bytes())
    with pytest.raises(SealError, match="site/guard.json: cannot unseal as 'guard.json'.*in another folder"):
        read_json(site / "guard.json", key)
    record.unlink()
    with pytest.raises(SealError, match=r"site/guard.json: versions.sealed is missing beside it"):
        read_json(site / "guard.json", key)


def test_a_crash_between_a_file_and_its_record_loses_nothing(tmp_path):
    key = generate_state_key(tmp_path / "state.key")
    write_json(tmp_path / "site" / "guard.json", {"round": 1}, key)
    record = (tmp_path / "site" / VERSIONS).read_bytes()
    write_json(tmp_path / "site" / "guard.json", {"round": 2}, key)
    (tmp_path / "site" / VERSIONS).write_bytes(record)  # as if the process died before the record was written
    assert read_json(tmp_path / "site" / "guard.json", key) == {"round": 2}
    write_json(tmp_path / "site" / "alone.json", {"best": "naive"}, key)
    assert read_json(tmp_path / "site" / "guard.json", key) == {"round": 2}
    assert read_json(tmp_path / "site" / "alone.json", key) == {"best": "naive"}
