"""The main job: a federated simulation of this App, ending with the per-site results table.

    python -m simulations.run                         # built-in demo sites
    python -m simulations.run --data my.csv           # your long-format file (unique_id, ds, y[, site])
    python -m simulations.run --set num-server-rounds=10 --set lr=0.001

One simulated site per site in the data. Window settings default to the data's frequency
(printed); `--set KEY=VALUE` overrides any key of `[tool.flwr.app.config]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared.config import DataArgs, Settings, covariates, frequency_defaults, parse_overrides, read_args
from shared.data import seasons
from shared.sites import read_sites
from simulations.runner import APP_DIR, RunError, exit_on_sigterm, print_summary, run_app


def plan(data_path: str, site_column: str, overrides: dict[str, str]) -> tuple[dict, list[str]]:
    """Run config and site names: the data's frequency defaults, then the user's overrides."""
    run_config: dict = {"data-path": str(Path(data_path).resolve()) if data_path else "", "site-column": site_column}
    data = read_args(DataArgs, run_config | overrides)
    frame = read_sites(data, covariates(overrides))
    freq = frame.attrs["freq"]
    defaults = frequency_defaults(seasons(freq))
    run_config |= defaults | overrides
    Settings.checked(run_config)
    print(f"data: {data_path or 'built-in demo sites'}; frequency {freq}; "
          f"{frame['site'].nunique()} sites, {frame['unique_id'].nunique()} series")
    print("window settings: " + ", ".join(f"{k}={run_config[k]}" for k in defaults))
    return run_config, sorted(frame["site"].unique())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="long-format CSV/Parquet file; default: built-in demo sites")
    parser.add_argument("--site-column", default="site", help="column grouping series into sites (default: site)")
    parser.add_argument("--out", default="", help="output folder (default: runs/<time>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    parser.add_argument("--quiet", action="store_true", help="do not stream Flower's log")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    out = Path(args.out or APP_DIR / "runs" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: choose another --out (a site's state there would be reused)")
    try:
        run_config, sites = plan(args.data, args.site_column, parse_overrides(args.set))
    except ValueError as exc:  # bad data (DataError) or run config: the message names the file, key or series
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run_config.setdefault("cache-dir", str(APP_DIR / ".cache"))
    run_config["out-dir"] = str(out)
    run_config.setdefault("min-train-nodes", len(sites))  # every site takes part in every round
    print(f"{len(sites)} sites; output in {out}", flush=True)

    started = time.monotonic()
    try:
        run_app(run_config, num_supernodes=len(sites), workdir=out / "flower",
                stream_to=None if args.quiet else sys.stdout)
    except RunError as exc:
        print(f"simulation failed: {exc}", file=sys.stderr)
        return 1
    return print_summary(out / "summary.json", started, out / "flower", "simulation")


if __name__ == "__main__":
    sys.exit(main())
