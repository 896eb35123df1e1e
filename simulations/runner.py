"""Start and stop Flower simulation runs of this App, leaving no process behind.

`run_app` starts its own `flower-superlink --simulation` on a free loopback port (Flower's
managed local SuperLink would outlive the run and is shared by every run on the machine), runs
`flwr run` against it with a Flower home folder of ours, and stops the SuperLink's whole process
group afterwards, also when the run fails or is interrupted; the Ray it starts keeps its session
folder in the run's folder or in a temporary one (`ray_tmpdir`), never in the system temp dir.
`ray_head` starts one local Ray head that every run inside it joins (a comparison runs many),
unless `RAY_ADDRESS` names a cluster.
`Console` is what a person reads meanwhile: a line per round, read from the run's `per_site.json`;
Flower's own output goes to the run's log file, and to the console only when asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path

import psutil

from shared.config import FederationArgs, read_args
from shared.results import format_summary
from simulations.console import ANSI, Console

APP_DIR = Path(__file__).resolve().parents[1]  # the folder holding pyproject.toml
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # it would try to download torch
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "OPENBLAS_NUM_THREADS": "1",  # one BLAS thread per process: the engine already runs one per core
}
FEDERATION = "sim"
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107  # bytes in a Unix socket path, as Ray checks it
RAY_SOCKET = "ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.9"  # Ray's longest, under RAY_TMPDIR


class RunError(RuntimeError):
    """A Flower run failed; the message points at its logs."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a terminated command still stops what it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_run_config(path: Path, run_config: dict) -> Path:
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in run_config.items()))
    return path


def stop_tree(pid: int, grace: float = 10.0) -> None:
    """Terminate a process and every descendant, then kill what is still alive after `grace` s.

    Descendants are listed before anything is signalled: Flower starts SuperExec and app
    processes in sessions of their own, so a process-group kill would miss them, and once their
    parent is gone they can no longer be found through it.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_marked(name: str, value: str, grace: float = 10.0) -> None:
    """Stop every process whose environment has `name=value`: descendants orphaned when their parent died."""
    marked = []
    for proc in psutil.process_iter():
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            if proc.environ().get(name) == value:
                marked.append(proc)
    for proc in marked:
        stop_tree(proc.pid, grace)


def watch(parent: int, name: str, value: str, remove: Path | None = None, poll: float = 0.5) -> None:
    """Wait for process `parent` to end, then stop every process marked `name=value` (stop_marked)
    and delete the folder `remove`, if given."""
    with suppress(psutil.NoSuchProcess):
        process = psutil.Process(parent)
        while process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
            time.sleep(poll)
    stop_marked(name, value)
    if remove:
        shutil.rmtree(remove, ignore_errors=True)


@contextmanager
def watched(name: str, value: str, remove: Path | None = None):
    """While the block runs, a watchdog process stops every process marked `name=value`, and deletes
    the temporary folder `remove`, should this one die without cleaning up (kill -9): Flower and Ray
    run in sessions of their own and would outlive it."""
    command = [sys.executable, "-m", "simulations.runner", "--watch", str(os.getpid()), name, value,
               *([str(remove)] if remove else [])]
    watchdog = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        watchdog.kill()
        watchdog.wait()


def ray_tmpdir(workdir: Path | None = None) -> tuple[Path, bool]:
    """Ray's temp folder (RAY_TMPDIR) for a run in `workdir`, and whether it is temporary (for the caller to delete).

    `workdir/ray` keeps Ray's session folder (its logs) with the run. Ray also puts its Unix sockets
    there, and a socket path holds at most 107 bytes: when `workdir` is too deep for that (the
    default runs/<name>/flower already is), or not given, the folder is a new short one under /tmp
    (not the system temp dir, which TMPDIR may make as deep).
    """
    folder = workdir / "ray" if workdir else None
    if folder and len(str(folder / RAY_SOCKET).encode()) <= SOCKET_PATH_MAX:
        folder.mkdir(parents=True, exist_ok=True)
        return folder, False
    return Path(tempfile.mkdtemp(prefix="fedts-ray-", dir="/tmp")), True


@contextmanager
def superlink(home: Path, log_path: Path, timeout: float = 60.0):
    """A simulation SuperLink on a free loopback port; yields its address, stops it on exit.

    The Ray it starts keeps its session in `ray_tmpdir(home.parent)`, deleted on exit if temporary."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\naddress = "{address}"\ninsecure = true\n'
    )
    bin_dir = str(Path(sys.executable).parent)  # the SuperLink finds flower-superexec on PATH
    ray_dir, temporary = ray_tmpdir(home.parent)  # unused by a run that joins a Ray head (RAY_ADDRESS)
    env = {**os.environ, **QUIET_ENV, "FLWR_HOME": str(home), "RAY_TMPDIR": str(ray_dir),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    removed = ray_dir if temporary else None
    with watched("FLWR_HOME", str(home), removed):  # stops what the SuperLink started, should this process be killed
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["flower-superlink", "--insecure", "--simulation", "--host", "127.0.0.1", "--port", str(port),
                 "--disable-runtime-dependency-installation"],
                cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RunError(f"flower-superlink exited with code {process.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://{address}/health", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RunError(f"flower-superlink not healthy after {timeout:.0f} s; see {log_path}")
                    time.sleep(0.2)
            yield address, env
        finally:
            stop_tree(process.pid)
            stop_marked("FLWR_HOME", str(home))  # its processes that left the tree (Ray actors, on a busy machine)
            if removed:
                shutil.rmtree(removed, ignore_errors=True)


@contextmanager
def ray_head(timeout: float = 120.0):
    """A local Ray head that every run started inside joins (through `RAY_ADDRESS`), so each run
    skips starting and stopping Ray of its own (3 to 7 s a run, measured here). Does nothing when `RAY_ADDRESS`
    already names a cluster. Its address file stays in a folder of its own, so Ray users elsewhere
    on the machine do not join it; it is stopped, with every process it started, on exit."""
    if os.environ.get("RAY_ADDRESS"):
        yield
        return
    folder, _ = ray_tmpdir()
    port = free_port()
    log_path = folder / "ray-start.log"
    env = {**os.environ, **QUIET_ENV, "RAY_TMPDIR": str(folder)}
    with watched("RAY_TMPDIR", str(folder), folder):  # stops Ray and deletes its folder, should this process be killed
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
                 "--num-cpus", str(len(os.sched_getaffinity(0))), "--include-dashboard=false", "--disable-usage-stats"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            deadline = time.monotonic() + timeout
            while "Ray runtime started" not in log_path.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RunError(f"ray start did not start a head node; see {log_path}")
                time.sleep(0.2)
            os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
            yield
        finally:
            os.environ.pop("RAY_ADDRESS", None)
            stop_tree(process.pid)
            stop_marked("RAY_TMPDIR", str(folder))
            shutil.rmtree(folder, ignore_errors=True)


def run_app(run_config: dict, num_supernodes: int, workdir: Path, cpus_per_client: int = 1,
            label: str = "", verbose: bool = False, app_dir: Path | None = None) -> None:
    """Run this App (or the one at `app_dir`) in the simulation engine with `num_supernodes` sites and wait
    for it to end.

    `workdir` receives the Flower home folder (`flwr-home/`), the SuperLink log and the run's
    output (`flwr-run.log`); `run_config` overrides `[tool.flwr.app.config]`. Standard output
    shows a line per round, starting with `label`, and the run's output too if `verbose`.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = write_run_config(workdir / "run-config.toml", run_config)
    with superlink(workdir / "flwr-home", workdir / "superlink.log") as (_, env):
        command = [
            "flwr", "run", str(app_dir or APP_DIR), FEDERATION, "--stream",
            "--run-config", str(config_file),
            "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}",
        ]
        flwr_run(command, workdir, env, workdir / "flwr-run.log", run_config, Console(verbose), label)


def flwr_run(command: list[str], cwd: Path, env: dict, log_path: Path, run_config: dict,
             console: Console | None = None, label: str = "", mode: str = "w") -> None:
    """Run a `flwr run` command of `run_config` to its end, stopping its whole process tree
    afterwards; RunError if it fails. Its output goes to `log_path` without colour codes, and to
    `console` (with a line per round) if given."""
    fed = read_args(FederationArgs, run_config)
    per_site = Path(fed.out_dir) / "per_site.json"
    shown = console.rounds(per_site, fed.num_server_rounds, label) if console else nullcontext()
    with open(log_path, mode, buffering=1) as log, shown:  # line-buffered: readable while it runs
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            for line in process.stdout:
                log.write(ANSI.sub("", line))
                if console:
                    console.flower(line)
            process.wait()
        finally:
            stop_tree(process.pid)
    if process.returncode != 0:
        raise RunError(f"flwr run exited with code {process.returncode}; see {log_path}")


def print_summary(summary_path: Path, started: float, logs: Path, what: str) -> int:
    """Print a finished run's per-site results and wall time; 1 (with a message naming `logs`)
    if the run wrote no summary."""
    if not summary_path.exists():
        print(f"{what} failed: the run ended without writing {summary_path}; see {logs}", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    print()
    print(format_summary(summary))
    print(f"wall time {time.monotonic() - started:.0f} s; results: {summary_path}")
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["--watch"]:  # the watchdog process of `watched`
    watch(int(sys.argv[2]), sys.argv[3], sys.argv[4], Path(sys.argv[5]) if sys.argv[5:] else None)
