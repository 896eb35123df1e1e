"""End to end through Flower's simulation engine: tiny demo, per-site results, same seed same numbers."""

import json
import re

import psutil
import pytest

from simulations.run import main
from tests.conftest import TINY

pytestmark = pytest.mark.flower


def _run(out, cache, capsys):
    argv = ["--out", str(out), "--set", f"cache-dir={cache}"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    return json.loads((out / "summary.json").read_text()), json.loads((out / "per_site.json").read_text()), printed


def _left_behind(home) -> list[str]:
    """Processes still running with this run's Flower home in their environment."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.environ().get("FLWR_HOME") == str(home):
                found.append(f"{proc.info['pid']} {proc.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_simulation_writes_per_site_results_and_repeats_exactly(tmp_path, capsys):
    first, rows_1, printed = _run(tmp_path / "a", tmp_path / "cache-a", capsys)
    second, rows_2, _ = _run(tmp_path / "b", tmp_path / "cache-b", capsys)

    sites = [row["site"] for row in first["sites"]]
    assert sites == ["site00", "site01", "site02"]
    for row in first["sites"]:
        assert row["round"] == TINY["num-server-rounds"]
        assert row["federated_mae"] > 0 and row["simple_mae"] > 0 and row["local_only_mae"] > 0
        assert row["site"] in printed
    # a line per round and the table, as plain text; Flower's own output only in its log file
    progress = re.findall(r"^round (\d)/2 (train|evaluate) 3 sites \d+ s$", printed, re.M)
    assert progress == [("1", "train"), ("2", "train"), ("2", "evaluate")]
    assert "\x1b" not in printed and "SuperNodes changed" not in printed
    flower_log = (tmp_path / "a" / "flower" / "flwr-run.log").read_text()
    assert "configure_train: Sampled 3 nodes" in flower_log and "\x1b" not in flower_log
    # every site trained in every round; the global encoder was checkpointed
    trained = {(r["round"], r["site"]) for r in rows_1 if r["phase"] == "train"}
    assert trained == {(r, s) for r in (1, 2) for s in sites}
    assert (tmp_path / "a" / "global_encoder.pt").exists()
    for site in sites:
        assert (tmp_path / "a" / "sites" / site / "model.pt").exists()

    # same seed, same numbers (only timings differ)
    assert first["sites"] == second["sites"]
    drop_node = lambda rows: [{k: v for k, v in r.items() if k != "node_id"} for r in rows]  # noqa: E731
    assert drop_node(rows_1) == drop_node(rows_2)

    # nothing the runs started is still running
    assert _left_behind(tmp_path / "a" / "flower" / "flwr-home") == []
    assert _left_behind(tmp_path / "b" / "flower" / "flwr-home") == []


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.csv"], "cannot read .*missing.csv"),
    (["--set", "lookbak=24"], "unknown run-config key lookbak"),
    (["--set", "lookback=abc"], "config key 'lookback': cannot read 'abc' as int"),
])
def test_bad_data_or_run_config_ends_the_main_job_with_one_line_before_flower_starts(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not out.exists()  # nothing started
