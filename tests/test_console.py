"""What a person reads while a run goes on: a line per round from per_site.json, Flower's output on request."""

import io
import json
import re

import pytest

from simulations.pilot import Pilot
from simulations.console import Console, Phase, completed_phases, read_phases
from simulations.runner import RunError

ROWS = [  # as the server writes them, sorted by round, training first, then site
    {"round": 1, "phase": "train", "node_id": 11, "site": "a", "val-mae": 0.5},
    {"round": 1, "phase": "train", "node_id": 12, "site": "b", "val-mae": 0.6},
    {"round": 2, "phase": "train", "node_id": 11, "site": "a", "val-mae": 0.4},
    {"round": 2, "phase": "train", "node_id": 12, "site": "b", "error": "no reply within round-timeout"},
    {"round": 2, "phase": "evaluate", "node_id": 11, "site": "a"},
    {"round": 2, "phase": "evaluate", "node_id": 12, "site": "b"},
]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_phases_count_the_sites_that_answered_and_those_missing():
    shuffled = [ROWS[4], ROWS[3], ROWS[0], ROWS[5], ROWS[2], ROWS[1]]
    assert completed_phases(shuffled) == [Phase(1, "train", 2, 0), Phase(2, "train", 1, 1), Phase(2, "evaluate", 2, 0)]


@pytest.mark.parametrize("content", [None, "", '[{"round": 1, "phase": "tr', '{"round": 1}', '[{"site": "a"}]'])
def test_an_absent_half_written_or_foreign_file_has_no_phases_yet(tmp_path, content):
    path = tmp_path / "per_site.json"
    if content is not None:
        path.write_text(content)
    assert read_phases(path) == []


def test_a_line_per_new_phase_and_none_for_the_phases_of_a_resumed_runs_past(tmp_path):
    per_site, out = tmp_path / "per_site.json", io.StringIO()
    per_site.write_text(json.dumps(ROWS[:2]))  # round 1, done before this run
    console = Console(file=out)
    with console.rounds(per_site, total=2, label="federated", poll=0.01):
        per_site.write_text(json.dumps(ROWS[:4]))
    per_site.write_text(json.dumps(ROWS))  # written after the run's output ended: not this block's
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"federated: round 2/2 train 1 site \(1 missing\) \d+ s", lines[0])

    out.truncate(0), out.seek(0)
    with console.rounds(per_site, total=3, poll=0.01):
        per_site.write_text(json.dumps([*ROWS, {"round": 3, "phase": "train", "node_id": 11, "site": "a"}]))
    assert re.fullmatch(r"round 3/3 train 1 site \d+ s\n", out.getvalue())


def test_flowers_output_is_shown_only_when_verbose_and_without_colour_codes_off_a_terminal():
    lines = ["\x1b[92mINFO \x1b[0m:      configure_train: Sampled 3 nodes (out of 3)\n",
             "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.\n",
             "warning: 7 validation origins judge the guard\n",
             "\x1b[91mERROR \x1b[0m:     ServerApp raised an exception\n"]
    quiet, verbose = io.StringIO(), io.StringIO()
    for line in lines:
        Console(file=quiet).flower(line)
        Console(verbose=True, file=verbose).flower(line)
    assert quiet.getvalue() == "warning: 7 validation origins judge the guard\nERROR :     ServerApp raised an exception\n"
    assert verbose.getvalue().count("\n") == 4 and "\x1b" not in verbose.getvalue()
    assert "Since flwr 1.32" in verbose.getvalue()


def test_on_a_terminal_the_lines_are_styled(tmp_path, monkeypatch):
    for name in ("NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    per_site, out = tmp_path / "per_site.json", Terminal()
    with Console(file=out).rounds(per_site, total=2, label="federated", poll=0.01):
        per_site.write_text(json.dumps(ROWS[:2]))
    shown = out.getvalue()
    assert "\x1b[1mfederated: \x1b[0m" in shown  # the label in bold
    assert "round 1/2 train 2 sites" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)


def test_the_pilot_makes_its_credentials_with_the_command_a_coordinator_runs(tmp_path):
    pilot = Pilot(tmp_path / "pilot")
    pilot.credentials(["site00", "site01"])
    for site in ("site00", "site01"):
        assert (pilot.creds / "orgs" / site / "auth_key.pub").exists()
    assert (pilot.creds / "coordinator" / "signing.key").exists()
    with pytest.raises(RunError, match=r"server.credentials exited with code 2; see .*credentials.log"):
        pilot.credentials(["site00"])  # refused: the folder holds credentials
    assert "not empty" in (pilot.logs / "credentials.log").read_text()

