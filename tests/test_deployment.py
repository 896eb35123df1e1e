"""The deployment engine for real: a SuperLink and SuperNodes on loopback, TLS, node authentication.

Each test starts real Flower processes (simulations.pilot) and stops them; about a minute each.
"""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pandas as pd
import psutil
import pytest
import torch

from server.credentials import generate
from simulations.pilot import Pilot, slice_sites
from simulations.runner import APP_DIR
from shared.config import DataArgs
from shared.sites import read_sites
from tests.conftest import TINY

pytestmark = pytest.mark.flower

SETTINGS = [f"{k}={v}" for k, v in {**TINY, "stat-models": ""}.items() if k not in ("demo-sites", "min-train-nodes", "num-server-rounds")]


def _pilot(out, *extra, rounds=2):
    command = [sys.executable, "-m", "simulations.pilot", "--out", str(out), "--sites", "2",
               "--set", f"num-server-rounds={rounds}", *[a for s in SETTINGS for a in ("--set", s)], *extra]
    return subprocess.Popen(command, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _own_processes(out):
    """Flower processes still alive that belong to the pilot in `out`."""
    alive = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if str(out) in " ".join(proc.info["cmdline"] or []) + (proc.info["cwd"] or ""):
                alive.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return alive


def test_pilot_runs_a_secured_federation_and_a_site_forecasts(tmp_path):
    out = tmp_path / "pilot"
    process = _pilot(out)
    log, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log

    summary = json.loads((out / "server" / "summary.json").read_text())
    assert [r["site"] for r in summary["sites"]] == ["site00", "site01"]
    assert summary["missing"] == []
    rows = json.loads((out / "server" / "per_site.json").read_text())
    assert {(r["round"], r["phase"], r["site"]) for r in rows} == {
        (1, "train", "site00"), (1, "train", "site01"), (2, "train", "site00"), (2, "train", "site01"),
        (2, "evaluate", "site00"), (2, "evaluate", "site01")}
    assert "site00" in log and "median skill" in log
    assert re.search(r"^round 2/2 evaluate 2 sites \d+ s$", log, re.M) and "\x1b" not in log  # a line per round
    # the coordinator's connection verifies the SuperLink against the federation's CA
    assert "root-certificates" in (out / "flwr-home" / "config.toml").read_text()
    assert not _own_processes(out)

    # the site forecasts its own series with its personalised model
    data = out / "data" / "site00.parquet"
    forecast = tmp_path / "forecast.csv"
    subprocess.run([sys.executable, "-m", "client.forecast", "--state-dir", str(out / "state" / "site00"),
                    "--data", str(data), "--out", str(forecast)], cwd=APP_DIR, check=True)
    history, predicted = pd.read_parquet(data), pd.read_csv(forecast, parse_dates=["ds"])
    assert list(predicted.columns) == ["unique_id", "ds", "y_hat"]
    for uid, part in predicted.groupby("unique_id"):
        last = history.loc[history["unique_id"] == uid, "ds"].max()
        assert list(part["ds"]) == list(pd.date_range(last, periods=TINY["horizon"] + 1, freq="h")[1:])
    assert predicted["y_hat"].notna().all()


def test_a_supernode_without_the_ca_or_with_an_unregistered_key_cannot_join(tmp_path):
    out = tmp_path / "pilot"
    data = slice_sites(read_sites(DataArgs(demo_sites=2, demo_length=TINY["demo-length"])), out / "data")
    generate(out / "credentials", ["127.0.0.1", "localhost"], ["site00", "site01", "intruder"])
    generate(tmp_path / "other", ["127.0.0.1"], ["x"])  # another federation's CA
    with Pilot(out) as pilot:
        pilot.superlink()
        pilot.register("site00")
        pilot.register("site01")
        unregistered = pilot.supernode("intruder", data["site00"])
        assert unregistered.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (out / "logs" / "supernode-intruder.log").read_text()  # Flower's 305
        wrong_ca = pilot.supernode("site01", data["site01"], ca=tmp_path / "other" / "ca" / "ca.crt",
                                   extra=("--max-retries", "2", "--max-wait-time", "10"))
        assert wrong_ca.wait(timeout=90) != 0
        assert "CERTIFICATE_VERIFY_FAILED" in (out / "logs" / "supernode-site01.log").read_text()
        listed = pilot.flwr("supernode", "list", "pilot", "--format", "json").stdout
        nodes = json.loads(listed[listed.index("{"):])["nodes"]
        assert all(node["status"] != "online" for node in nodes)


def _wait_for_round(state, at_least, alive, timeout=300):
    deadline = time.monotonic() + timeout
    while not (state.exists() and torch.load(state, weights_only=True)["round"] >= at_least):
        assert alive() and time.monotonic() < deadline
        time.sleep(0.5)
    return torch.load(state, weights_only=True)


@contextmanager
def _joined(out, n_sites, **run_changes):
    """A pilot federation of `n_sites` demo sites, every SuperNode joined; yields (pilot, sites, run config
    of 3 rounds with min-train-nodes 2, the sites verifying the coordinator's signed encoders)."""
    sites = slice_sites(read_sites(DataArgs(demo_sites=n_sites, demo_length=TINY["demo-length"])), out / "data")
    generate(out / "credentials", ["127.0.0.1", "localhost"], list(sites))
    run_config = {**dict(s.split("=", 1) for s in SETTINGS), "num-server-rounds": 3, "min-train-nodes": 2,
                  "out-dir": str(out / "server"), "cache-dir": str(APP_DIR / ".cache"),
                  "sign-key": str(out / "credentials" / "coordinator" / "signing.key"), **run_changes}
    with Pilot(out) as pilot:
        pilot.superlink()
        for site in sites:
            pilot.register(site)
        pilot.join(sites)
        yield pilot, sites, run_config


def test_a_serverapp_killed_mid_run_resumes_from_its_last_round(tmp_path):
    """The coordinator's ServerApp dies; `flwr run` with resume=true continues on the same federation."""
    out = tmp_path / "pilot"
    state = out / "server" / "server_state.pt"
    with _joined(out, 2) as (pilot, sites, run_config):
        failed = []
        first_run = threading.Thread(target=lambda: _record_failure(failed, pilot.run, run_config))
        first_run.start()
        first = _wait_for_round(state, 1, first_run.is_alive)
        (server_app,) = [p for p in _own_processes(out) if "flwr-serverapp" in " ".join(p.cmdline())]
        server_app.kill()
        # the coordinator stops the dead run rather than wait ~60 s for Flower to miss its heartbeats
        (run_id,) = re.findall(r"Successfully started run (\d+)", (out / "logs" / "flwr-run.log").read_text())
        pilot.flwr("stop", run_id, "pilot")
        first_run.join(timeout=120)
        assert not first_run.is_alive()
        assert not (out / "server" / "summary.json").exists()
        first = torch.load(state, weights_only=True)
        assert 1 <= first["round"] < 3

        pilot.run({**run_config, "resume": True})
    final = torch.load(state, weights_only=True)
    assert final["round"] == 3 and final["run_key"] == first["run_key"]
    rows = json.loads((out / "server" / "per_site.json").read_text())
    assert sorted({(r["round"], r["phase"]) for r in rows if "error" not in r}) == [
        (1, "train"), (2, "train"), (3, "evaluate"), (3, "train")]
    assert [r["site"] for r in json.loads((out / "server" / "summary.json").read_text())["sites"]] == list(sites)
    assert not _own_processes(out)


@pytest.mark.slow  # about 80 s; the default suite's tests/test_faults.py drops sites in simulation
def test_a_supernode_killed_mid_run_is_reported_missing_and_the_others_finish(tmp_path):
    """One SuperNode of three is killed after round 1: with min-train-nodes 2 the run completes, its rounds
    after the kill record the site as missing, and the two others evaluate."""
    out = tmp_path / "pilot"
    with _joined(out, 3, **{"round-timeout": 20.0}) as (pilot, _, run_config):
        failed = []
        run = threading.Thread(target=lambda: _record_failure(failed, pilot.run, run_config))
        run.start()
        killed_after = _wait_for_round(out / "server" / "server_state.pt", 1, run.is_alive)["round"]
        for proc in psutil.Process(pilot.supernodes["site02"].pid).children(recursive=True):
            proc.kill()
        pilot.supernodes["site02"].kill()
        run.join(timeout=600)
        assert not run.is_alive() and not failed, failed
    rows = json.loads((out / "server" / "per_site.json").read_text())
    assert {r["site"] for r in rows if "error" in r} == {"site02"}
    assert any(r["site"] == "site02" and r["round"] > killed_after and "error" in r for r in rows)
    assert {(r["round"], r["site"]) for r in rows if r["phase"] == "train" and "error" not in r} >= {
        (n, s) for n in range(killed_after + 1, 4) for s in ("site00", "site01")}
    summary = json.loads((out / "server" / "summary.json").read_text())
    assert [r["site"] for r in summary["sites"]] == ["site00", "site01"]
    assert {r["site"] for r in summary["missing"]} == {"site02"}
    assert not _own_processes(out)


def _record_failure(failed, fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # the killed run's `flwr run` may report the failure
        failed.append(exc)


@pytest.mark.slow
def test_a_pilot_stopped_mid_run_resumes_after_a_full_restart(tmp_path):
    """Every process stopped (the pilot gets SIGTERM), then `--resume`: SuperNodes wait until Flower lets them rejoin."""
    out = tmp_path / "pilot"
    process = _pilot(out, rounds=3)
    first = _wait_for_round(out / "server" / "server_state.pt", 1, lambda: process.poll() is None)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode != 0 and not _own_processes(out)

    process = _pilot(out, "--resume", rounds=3)
    log, _ = process.communicate(timeout=600)
    assert process.returncode == 0, log
    final = torch.load(out / "server" / "server_state.pt", weights_only=True)
    assert final["round"] == 3 and final["run_key"] == first["run_key"]
    assert not _own_processes(out)


@pytest.mark.parametrize("command", ["simulations.pilot", "server.pretrain", "studies.secagg_cost"])
def test_commands_refuse_an_unknown_run_config_key_before_starting_anything(tmp_path, command):
    import importlib

    main = importlib.import_module(command).main
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="error: unknown run-config key lookbak"):
        main(["--out", str(out), "--set", "lookbak=24"])
    assert not out.exists()
