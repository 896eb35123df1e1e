"""A deployment pilot on one machine: a SuperLink and one SuperNode per site on loopback, secured.

    python -m simulations.pilot                        # 3 built-in demo sites
    python -m simulations.pilot --data my.csv          # one SuperNode per site of your file
    python -m simulations.pilot --out DIR --resume     # continue a pilot that was stopped

It does what the three-machine deployment of docs/deployment.md does, with the same App and commands: makes
the federation's credentials (`python -m server.credentials`), starts `flower-superlink` with TLS
and SuperNode authentication, registers each site's key, starts each site's SuperNode
(`python -m client.supernode`: Flower's `flower-supernode` with shorter waits) on its own slice
of the data (its own file, state folder and Flower home), runs `flwr run` showing a line per round,
prints the per-site results and stops every process it started, also on failure, Ctrl-C,
SIGTERM or kill -9 (a watchdog process does it then). Logs go to OUT/logs/ (the run's in
flwr-run.log, shown too with --verbose).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from shared.config import parse_overrides
from shared.sites import plan_run
from simulations.console import Console
from simulations.runner import (APP_DIR, QUIET_ENV, RunError, exit_on_sigterm, flwr_run, free_port, print_summary,
                                stop_marked, stop_tree, watched, write_run_config)

FEDERATION = "pilot"
HOST = "127.0.0.1"
MARK = "FEDTS_PILOT"  # environment variable naming the pilot a process belongs to


def wait_for_port(process: subprocess.Popen, port: int, log: Path, timeout: float = 60.0) -> None:
    """Return once `port` accepts connections; RunError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RunError(f"{process.args[0]} exited with code {process.returncode}; see {log}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RunError(f"{process.args[0]} not listening on port {port} after {timeout:.0f} s; see {log}")
            time.sleep(0.2)


class Pilot:
    """The processes of one pilot; `stop()` (or leaving the `with` block) stops every one of them,
    and inside the `with` block a watchdog stops them should this process be killed (kill -9)."""

    def __init__(self, out: Path, supernode_poll: float | None = None):
        self.out = out
        self.supernode_poll = supernode_poll  # None: client.supernode's own; 0: Flower's flower-supernode
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.creds = out / "credentials"
        self.home = out / "flwr-home"  # the coordinator's Flower home: its SuperLink connection
        self.port = 0
        bin_dir = str(Path(sys.executable).parent)  # flower-superexec and flwr-clientapp are found on PATH
        self.env = {**os.environ, **QUIET_ENV, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                    MARK: str(out)}  # inherited by every process Flower starts for the pilot
        self._stack = ExitStack()
        self.supernodes: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Pilot:
        self._stack.enter_context(watched(MARK, str(self.out)))
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stack.close()
        stop_marked(MARK, str(self.out))  # what a crashed parent left behind

    def start(self, name: str, command: list[str], home: Path) -> subprocess.Popen:
        """Start a long-running Flower process with its own Flower home; it is stopped with the pilot."""
        home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, cwd=home, env={**self.env, "FLWR_HOME": str(home)}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self._stack.callback(stop_tree, process.pid)
        return process

    def flwr(self, *args: str, log_name: str = "flwr", check: bool = True) -> subprocess.CompletedProcess:
        """A `flwr` CLI command as the coordinator (its output is appended to the named log)."""
        result = subprocess.run(["flwr", *args], cwd=self.out, env={**self.env, "FLWR_HOME": str(self.home)},
                                capture_output=True, text=True)
        with open(self.logs / f"{log_name}.log", "a") as log:
            log.write(f"$ flwr {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise RunError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed "
                           f"(code {result.returncode}); see {self.logs / (log_name + '.log')}")
        return result

    def credentials(self, sites: list[str]) -> None:
        """The federation's credentials for the pilot's SuperLink address and sites, as a coordinator makes them."""
        addresses = [a for host in (HOST, "localhost") for a in ("--superlink-address", host)]
        command = [sys.executable, "-m", "server.credentials", "--out", str(self.creds), *addresses,
                   *[a for site in sites for a in ("--org", site)]]
        log = self.logs / "credentials.log"
        with open(log, "ab") as output:
            done = subprocess.run(command, cwd=APP_DIR, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RunError(f"python -m server.credentials exited with code {done.returncode}; see {log}")

    def superlink(self) -> None:
        """The SuperLink with TLS and SuperNode authentication; its state (registrations) in a database file."""
        self.port = free_port()
        link = self.creds / "superlink"
        process = self.start("superlink", [
            "flower-superlink", "--host", HOST, "--port", str(self.port),
            "--ssl-ca-certfile", str(link / "ca.crt"), "--ssl-certfile", str(link / "server.pem"),
            "--ssl-keyfile", str(link / "server.key"), "--enable-supernode-auth",
            "--database", str(self.out / "superlink.db"), "--disable-runtime-dependency-installation",
        ], self.out / "superlink-home")
        wait_for_port(process, self.port, self.logs / "superlink.log")
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\naddress = "{HOST}:{self.port}"\n'
            f'root-certificates = "{(self.creds / "ca" / "ca.crt").resolve()}"\n')

    def register(self, site: str, timeout: float = 30.0) -> None:
        """Register the site's public key with the SuperLink (a key registered before is fine)."""
        key = self.creds / "orgs" / site / "auth_key.pub"
        deadline = time.monotonic() + timeout
        while True:
            result = self.flwr("supernode", "register", str(key), FEDERATION, "--name", site, check=False)
            if result.returncode == 0 or "already" in (result.stdout + result.stderr).lower():
                return
            if time.monotonic() > deadline:
                raise RunError(f"could not register {site}'s key; see {self.logs / 'flwr.log'}")
            time.sleep(1)

    def supernode(self, site: str, data_path: Path, *, key: Path | None = None, ca: Path | None = None,
                  extra: tuple[str, ...] = ()) -> subprocess.Popen:
        """The site's SuperNode: TLS with the federation's CA, its auth key, its data file and state folder."""
        org = self.creds / "orgs" / site
        node_config = (f"data-path='{data_path}' state-dir='{self.out / 'state' / site}' site-name='{site}' "
                       f"verify-key='{org / 'signing.pub'}' reply-key='{org / 'reply.key'}'")
        if self.supernode_poll == 0:
            launcher = ["flower-supernode"]
        else:
            poll = () if self.supernode_poll is None else ("--poll", str(self.supernode_poll))
            launcher = [sys.executable, "-m", "client.supernode", *poll]
        process = self.start(f"supernode-{site}", [
            *launcher, "--superlink", f"{HOST}:{self.port}",
            "--root-certificates", str(ca or org / "ca.crt"),
            "--auth-supernode-private-key", str(key or org / "auth_key"),
            "--port", str(free_port()), "--node-config", node_config, *extra,
        ], self.out / "nodes" / site)
        self.supernodes[site] = process
        return process

    def join(self, sites: dict[str, Path], timeout: float = 120.0) -> None:
        """Start every site's SuperNode and wait until each has joined the federation.

        A SuperNode restarted soon after its SuperLink died is refused ("Failed to activate
        SuperNode") until the SuperLink marks it offline: two missed heartbeats, about 60 s in
        Flower 1.41. Such a SuperNode is started again until it joins or `timeout` passes.
        """
        deadline = time.monotonic() + timeout
        waiting = dict(sites)
        while waiting:
            for site, path in list(waiting.items()):
                log = self.logs / f"supernode-{site}.log"
                offset = log.stat().st_size if log.exists() else 0
                process = self.supernode(site, path)
                while process.poll() is None and "SuperNode ID" not in log.read_text()[offset:]:
                    time.sleep(0.2)
                if process.poll() is None:
                    del waiting[site]
                elif "Failed to activate SuperNode" not in log.read_text()[offset:] or time.monotonic() > deadline:
                    raise RunError(f"the SuperNode of {site} exited with code {process.returncode}; see {log}")
            if waiting:
                time.sleep(5)

    def run(self, run_config: dict, console: Console | None = None) -> None:
        """`flwr run` of this App on the pilot federation, its rounds shown on `console`; waits for the run to end."""
        config_file = write_run_config(self.out / "run-config.toml", run_config)
        command = ["flwr", "run", str(APP_DIR), FEDERATION, "--stream", "--run-config", str(config_file)]
        flwr_run(command, self.out, {**self.env, "FLWR_HOME": str(self.home)}, self.logs / "flwr-run.log",
                 run_config, console, mode="a")


def slice_sites(frame, folder: Path) -> dict[str, Path]:
    """One long-format file per site (what each organization holds), from the pilot's data."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for site, part in frame.groupby("site", sort=True):
        paths[site] = folder / f"{site}.parquet"
        part.reset_index(drop=True).to_parquet(paths[site])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="long-format CSV/Parquet file; default: built-in demo sites")
    parser.add_argument("--site-column", default="site", help="column grouping series into sites (default: site)")
    parser.add_argument("--sites", type=int, default=3, help="built-in demo sites to run (default 3)")
    parser.add_argument("--out", default="", help="pilot folder (default: runs/pilot-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    parser.add_argument("--resume", action="store_true", help="continue the stopped pilot in --out")
    parser.add_argument("--quiet", action="store_true", help="show only the results, not a line per round")
    parser.add_argument("--verbose", action="store_true", help="also show the run's own output")
    parser.add_argument("--supernode-poll", type=float, default=None,
                        help="SuperNodes' idle poll in seconds (client.supernode --poll; default: its own); "
                             "0 runs Flower's flower-supernode, which waits 3 s")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    out = Path(args.out or APP_DIR / "runs" / time.strftime("pilot-%Y%m%d-%H%M%S")).resolve()
    if args.resume and not (out / "run-config.toml").exists():
        raise SystemExit(f"--resume: {out} holds no pilot to continue")
    if not args.resume and out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose another --out, or add --resume to continue the pilot there")
    try:  # bad data (DataError) or run config: one line naming the file, key or series, before anything starts
        plan = plan_run(args.data, args.site_column, parse_overrides(args.set), chosen={"demo-sites": args.sites},
                        fixed={"data-path": "", "site-column": "site",  # each site reads its own file (slice_sites)
                               "out-dir": str(out / "server"), "cache-dir": str(APP_DIR / ".cache"),
                               "sign-key": str(out / "credentials" / "coordinator" / "signing.key"),
                               "roster": str(out / "credentials" / "coordinator" / "roster.txt"),
                               "resume": args.resume})
        frame, freq = plan.frame, plan.frame.attrs["freq"]
        run_config = plan.config | {"min-train-nodes": plan.config.get("min-train-nodes", len(plan.sites))}
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    sites = slice_sites(frame, out / "data")
    print(f"pilot in {out}: {len(sites)} sites ({', '.join(sites)}), frequency {freq}", flush=True)

    started = time.monotonic()
    with Pilot(out, args.supernode_poll) as pilot:
        try:
            if not args.resume:
                pilot.credentials(list(sites))
            pilot.superlink()
            for site in sites:
                pilot.register(site)
            pilot.join(sites)
            print(f"{len(sites)} SuperNodes joined the SuperLink at {HOST}:{pilot.port}", flush=True)
            pilot.run(run_config, None if args.quiet else Console(args.verbose))
        except RunError as exc:
            print(f"pilot failed: {exc}", file=sys.stderr)
            return 1
    return print_summary(out / "server" / "summary.json", started, out / "logs" / "flwr-run.log", "pilot")


if __name__ == "__main__":
    sys.exit(main())
