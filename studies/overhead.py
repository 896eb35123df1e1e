"""What a deployment round costs beyond the training itself.

    python -m studies.overhead [--sites 2] [--rounds 5] [--poll 1.0 0.1] [--supernode-poll 0.5 0]
                               [--reply-poll 0.2 3] [--set KEY=VALUE] [--out DIR]

For a tiny model, runs the same federation in this process (simulations.local: the ServerApp and
ClientApp without Flower processes, each handler timed) and as a deployment pilot
(simulations.pilot: SuperLink, SuperNodes, TLS, authentication), once for every combination of
the SuperExec poll interval, the SuperNodes' idle poll and the server's reply poll given. A round's overhead is its deployment wall time (train phase) minus the slowest
site's in-process train-handler time for that round (the sites train in parallel in a deployment). Round 1 is
reported apart: it also installs the App on every node. Writes DIR/overhead.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

from flwr.app import Context, RecordDict

from client.supernode import DEFAULT_POLL
from server.app import main as server_main
from shared.checkpoint import write_json
from shared.config import FederationArgs
from simulations import pilot
from simulations.local import LocalGrid
from simulations.runner import APP_DIR, exit_on_sigterm

TINY = {  # a model small enough that a round's training takes about a second
    "lookback": 48, "horizon": 12, "lags": "1 24", "patch-len": 12, "patch-stride": 12,
    "d-model": 16, "n-heads": 2, "n-layers": 1, "d-ff": 32,
    "corpus-series": 40, "corpus-length": 200, "pretrain-epochs": 2,
    "max-epochs": 3, "steps-per-epoch": 5, "batch-size": 32,
    "val-size": 96, "test-size": 48, "stride": 12, "demo-length": 600, "stat-models": "",
}


def in_process(out: Path, sites: int, rounds: int) -> dict[int, float]:
    """The slowest site's train-handler seconds per round."""
    run_config = {**TINY, "demo-sites": sites, "num-server-rounds": rounds, "min-train-nodes": sites,
                  "out-dir": str(out), "cache-dir": str(APP_DIR / ".cache")}
    grid = LocalGrid(run_config, sites)
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    per_round: dict[int, dict[int, float]] = {}
    for row in (r for r in grid.messages if r["phase"] == "train"):
        per_round.setdefault(row["round"], {}).setdefault(row["node"], 0.0)
        per_round[row["round"]][row["node"]] += row["seconds"]
    return {r: max(nodes.values()) for r, nodes in per_round.items()}


def deployed(out: Path, sites: int, rounds: int, poll: float, supernode_poll: float = DEFAULT_POLL,
             reply_poll: float = FederationArgs.reply_poll, extra: list[str] = ()) -> dict[int, float]:
    """Wall seconds per round of the same federation as a pilot, with this SuperExec poll interval,
    SuperNode idle poll (0: Flower's flower-supernode), server reply poll and `extra` KEY=VALUE settings."""
    os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(poll)  # read by the SuperLink's and SuperNodes' SuperExec
    argv = ["--out", str(out), "--sites", str(sites), "--quiet", "--set", f"num-server-rounds={rounds}",
            "--supernode-poll", str(supernode_poll), "--set", f"reply-poll={reply_poll}",
            *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")], *[a for kv in extra for a in ("--set", kv)]]
    if pilot.main(argv) != 0:
        raise SystemExit(f"the pilot failed; see {out / 'logs'}")
    summary = json.loads((out / "server" / "summary.json").read_text())
    return {int(r): s for r, s in summary["seconds"]["rounds"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, nargs="+", default=[1.0, 0.1],
                        help="SuperExec task poll intervals to measure (Flower's default: 1.0 s)")
    parser.add_argument("--supernode-poll", type=float, nargs="+", default=[DEFAULT_POLL],
                        help=f"SuperNode idle polls to measure (client.supernode; default {DEFAULT_POLL}; "
                             "0: Flower's flower-supernode, 3 s)")
    parser.add_argument("--reply-poll", type=float, nargs="+", default=[FederationArgs.reply_poll],
                        help=f"server reply polls to measure (run config reply-poll; default {FederationArgs.reply_poll})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-config key for the pilot only, e.g. secagg=true: its rounds are then compared "
                             "with the plain in-process training time")
    parser.add_argument("--out", default="", help="report folder (default: runs/overhead-<time>)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    out = Path(args.out or APP_DIR / "runs" / time.strftime("overhead-%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)

    compute = in_process(out / "in-process", args.sites, args.rounds)
    report = {"command": "python -m studies.overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
              "sites": args.sites, "rounds": args.rounds, "settings": TINY, "pilot_settings": args.set,
              "in_process_seconds": compute, "deployment": []}
    print(f"training per round, in process (slowest site): "
          f"{', '.join(f'{compute[r]:.2f}' for r in sorted(compute))} s")
    for poll, node_poll, reply_poll in itertools.product(args.poll, args.supernode_poll, args.reply_poll):
        name = f"pilot-exec{poll:g}-node{node_poll:g}-reply{reply_poll:g}"
        rounds = deployed(out / name, args.sites, args.rounds, poll, node_poll, reply_poll, args.set)
        overhead = {r: rounds[r] - compute[r] for r in rounds}
        later = [overhead[r] for r in overhead if r > 1]
        row = {"poll_interval": poll, "supernode_poll": node_poll, "reply_poll": reply_poll,
               "round_seconds": rounds, "overhead_seconds": overhead,
               "overhead_first_round": overhead[1], "overhead_median_later": statistics.median(later)}
        report["deployment"].append(row)
        print(f"SuperExec poll {poll:g} s, SuperNode poll {node_poll:g} s, reply poll {reply_poll:g} s: round wall "
              f"time {', '.join(f'{rounds[r]:.1f}' for r in sorted(rounds))} s; overhead round 1 {overhead[1]:.1f} s, "
              f"later rounds median {row['overhead_median_later']:.1f} s")
        write_json(out / "overhead.json", report)
    print(f"report: {out / 'overhead.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
