"""The main job: a federated simulation of this App, ending with the per-site results table.

    python -m simulations.run                         # built-in demo sites
    python -m simulations.run --data my.csv           # your long-format file (unique_id, ds, y[, site])
    python -m simulations.run --set num-server-rounds=10 --set lr=0.001

One simulated site per site in the data. Window settings default to the data's frequency
(printed); `--set KEY=VALUE` overrides any key of `[tool.flwr.app.config]`. A line per round
shows the progress; Flower's own output goes to OUT/flower/flwr-run.log (shown too with --verbose).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shared.config import parse_overrides
from shared.sites import plan_run
from simulations.runner import APP_DIR, RunError, exit_on_sigterm, print_summary, run_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="long-format CSV/Parquet file; default: built-in demo sites")
    parser.add_argument("--site-column", default="site", help="column grouping series into sites (default: site)")
    parser.add_argument("--out", default="", help="output folder (default: runs/<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    parser.add_argument("--verbose", action="store_true", help="also show Flower's own output")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    out = Path(args.out or APP_DIR / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose another --out (a site's state there would be reused)")
    try:
        plan = plan_run(args.data, args.site_column, parse_overrides(args.set),
                        fixed={"out-dir": str(out)})
    except ValueError as exc:  # bad data (DataError) or run config: the message names the file, key or series
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run_config, sites = plan.config, plan.sites
    print(f"data: {args.data or 'built-in demo sites'}; frequency {plan.frame.attrs['freq']}; "
          f"{len(sites)} sites, {plan.frame['unique_id'].nunique()} series")
    print("window settings: " + ", ".join(f"{k}={run_config[k]}" for k in plan.defaults))
    run_config.setdefault("cache-dir", str(APP_DIR / ".cache"))
    # every site is waited for and takes part; a round goes on while at most a quarter of them fail
    run_config.setdefault("wait-for-nodes", len(sites))
    run_config.setdefault("min-train-nodes", max(1, len(sites) - len(sites) // 4))
    print(f"{len(sites)} sites; output in {out}; Flower's log: {out / 'flower' / 'flwr-run.log'}", flush=True)

    started = time.monotonic()
    try:
        run_app(run_config, num_supernodes=len(sites), workdir=out / "flower", verbose=args.verbose)
    except RunError as exc:
        print(f"simulation failed: {exc}", file=sys.stderr)
        return 1
    return print_summary(out / "summary.json", started, out / "flower", "simulation")


if __name__ == "__main__":
    sys.exit(main())
