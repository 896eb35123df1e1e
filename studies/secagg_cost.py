"""What SecAgg+ costs a round: bytes each way per site, and time, against the same round without it.

    python -m studies.secagg_cost [--sites 4] [--rounds 1] [--out DIR] [--set KEY=VALUE ...]

Runs the App (ServerApp and ClientApp, default model unless --set says otherwise) in this one
process (simulations.local) on the built-in demo sites, once plain and once with secagg=true, and
counts what each train message weighs on the wire. Training time is the same in both: the
difference is SecAgg+'s key agreement, sharing, masking and unmasking (and its three extra
message exchanges, which in a deployment each add a round trip: studies.overhead). Writes
DIR/secagg_cost.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flwr.app import Context, RecordDict

from server.app import main as server_main
from shared.checkpoint import write_json
from shared.config import Settings, parse_overrides
from simulations.local import LocalGrid
from simulations.runner import APP_DIR


def measure(out: Path, run_config: dict, sites: int) -> dict:
    grid = LocalGrid(run_config, sites)
    started = time.monotonic()
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    train = [m for m in grid.messages if m["phase"] == "train"]
    return {"wall_seconds": time.monotonic() - started,
            "train_messages_per_site_round": len(train) / sites / run_config["num-server-rounds"],
            "train_bytes_down_per_site_round": sum(m["bytes_down"] for m in train) / sites / run_config["num-server-rounds"],
            "train_bytes_up_per_site_round": sum(m["bytes_up"] for m in train) / sites / run_config["num-server-rounds"],
            "train_handler_seconds": sum(m["seconds"] for m in train)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="", help="report folder (default: runs/secagg-cost-<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    args = parser.parse_args(argv)
    out = Path(args.out or APP_DIR / "runs" / time.strftime("secagg-cost-%Y%m%d-%H%M%S")).resolve()
    base = {"demo-sites": args.sites, "num-server-rounds": args.rounds, "min-train-nodes": args.sites,
            "stat-models": "", "cache-dir": str(APP_DIR / ".cache"), **parse_overrides(args.set)}
    try:
        Settings.checked(base)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    report = {"command": "python -m studies.secagg_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
              "sites": args.sites, "rounds": args.rounds}
    for name, secagg in (("plain", False), ("secagg", True)):
        report[name] = measure(out / name, {**base, "secagg": secagg, "out-dir": str(out / name)}, args.sites)
        row = report[name]
        print(f"{name:>6}: {row['train_messages_per_site_round']:.0f} train messages per site and round, "
              f"{row['train_bytes_down_per_site_round']:,.0f} B down, {row['train_bytes_up_per_site_round']:,.0f} B up "
              f"per site and round; run {row['wall_seconds']:.1f} s", flush=True)
    write_json(out / "secagg_cost.json", report)
    print(f"report: {out / 'secagg_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
