"""A command killed with kill -9 leaves no Flower process behind: its watchdog stops them. Ray leaves
no session folder in the system temp dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from simulations.pilot import MARK
from simulations.runner import APP_DIR, RAY_SOCKET, ray_tmpdir, run_app, watch
from tests.conftest import TINY

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


def test_ray_keeps_its_session_in_the_runs_folder_unless_its_socket_paths_would_not_fit(tmp_path):
    short = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        assert ray_tmpdir(short) == (short / "ray", False) and (short / "ray").is_dir()
    finally:
        shutil.rmtree(short)
    deep = tmp_path / ("run" * 20)
    folder, temporary = ray_tmpdir(deep)
    try:
        assert temporary and folder.parent == Path("/tmp") and not deep.exists()
        assert len(str(folder / RAY_SOCKET).encode()) <= 107
    finally:
        shutil.rmtree(folder)


@pytest.mark.flower
def test_a_killed_command_leaves_no_superlink_behind(tmp_path):
    home = tmp_path / "flwr-home"
    code = ("import sys, time; from pathlib import Path; from simulations.runner import superlink\n"
            "with superlink(Path(sys.argv[1]), Path(sys.argv[2])):\n"
            "    print('up', flush=True); time.sleep(120)\n")
    command = subprocess.Popen([sys.executable, "-c", code, str(home), str(tmp_path / "superlink.log")],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert command.stdout.readline().strip() == "up"
    running = _marked("FLWR_HOME", str(home))  # the SuperLink runs, in a session of its own
    ray_dir = Path(running[0].environ()["RAY_TMPDIR"])  # a temporary folder: tmp_path is too deep for Ray's sockets
    assert ray_dir.parent == Path("/tmp") and ray_dir.is_dir()
    os.kill(command.pid, signal.SIGKILL)
    command.wait()
    assert _wait_until(lambda: not _marked("FLWR_HOME", str(home)))
    assert _wait_until(lambda: not ray_dir.exists())


@pytest.mark.flower
def test_a_killed_pilot_leaves_no_superlink_or_supernode_behind(tmp_path):
    out = tmp_path / "pilot"
    settings = [a for k, v in TINY.items() if k not in ("demo-sites", "min-train-nodes") for a in ("--set", f"{k}={v}")]
    command = subprocess.Popen([sys.executable, "-m", "simulations.pilot", "--out", str(out), "--sites", "2", "--quiet",
                                *settings], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = ""
    while "SuperNodes joined" not in printed and command.poll() is None:
        printed += command.stdout.readline()
    assert "SuperNodes joined" in printed, printed
    names = " ".join(" ".join(proc.cmdline()) for proc in _marked(MARK, str(out)))
    assert "flower-superlink" in names and names.count("client.supernode") == 2
    os.kill(command.pid, signal.SIGKILL)
    command.wait()
    assert _wait_until(lambda: not _marked(MARK, str(out)), timeout=60)


@pytest.mark.flower
def test_a_simulation_leaves_no_ray_session_in_the_system_temp_dir(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"  # where Ray would go by default (TMPDIR)
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    workdir = Path(tempfile.mkdtemp(dir="/tmp"))  # short enough for Ray's sockets: its session stays with the run
    try:
        run_app({**TINY, "cache-dir": str(APP_DIR / ".cache"), "out-dir": str(workdir / "out")}, 3, workdir)
        assert list((workdir / "ray" / "ray").glob("session_2*"))
    finally:
        shutil.rmtree(workdir)
    assert not (system_tmp / "ray").exists()
