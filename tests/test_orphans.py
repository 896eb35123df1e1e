"""A command killed with kill -9 leaves no Flower process behind: its watchdog stops them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from simulations.runner import watch

ROOT = Path(__file__).resolve().parents[1]


def _marked(name: str, value: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(name) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_the_watchdog_stops_the_marked_processes_once_its_parent_is_gone(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                             env={**os.environ, "MARK": str(tmp_path)})
    parent.kill()
    parent.wait()
    watch(parent.pid, "MARK", str(tmp_path), poll=0.05)
    assert child.wait(timeout=15) is not None and not _marked("MARK", str(tmp_path))


@pytest.mark.flower
def test_a_killed_command_leaves_no_superlink_behind(tmp_path):
    home = tmp_path / "flwr-home"
    code = ("import sys, time; from pathlib import Path; from simulations.runner import superlink\n"
            "with superlink(Path(sys.argv[1]), Path(sys.argv[2])):\n"
            "    print('up', flush=True); time.sleep(120)\n")
    command = subprocess.Popen([sys.executable, "-c", code, str(home), str(tmp_path / "superlink.log")],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert command.stdout.readline().strip() == "up"
    assert _marked("FLWR_HOME", str(home))  # the SuperLink runs, in a session of its own
    os.kill(command.pid, signal.SIGKILL)
    command.wait()
    assert _wait_until(lambda: not _marked("FLWR_HOME", str(home)))
