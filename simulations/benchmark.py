"""The comparison on the real multi-site data sets beside the project (`../shared/data`).

    python -m simulations.benchmark beijing [--out DIR] [extra simulations.compare options]
    python -m simulations.benchmark nn5
    python -m simulations.benchmark coldstart-nn5
    python -m simulations.benchmark coldstart-beijing

Each preset is one `simulations.compare` command (printed before it runs); the report lands in
`runs/benchmark-<name>/` unless --out says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.compare import main as compare
from simulations.runner import APP_DIR

DATA = APP_DIR.parent / "shared" / "data"
PRESETS = {
    # 12 stations, 30 days of hourly history, daily origins over 28-day test periods, 4 cutoffs 90 days apart
    "beijing": ["--data", str(DATA / "beijing_air" / "pm25_hourly.csv.gz"), "--history", "720",
                "--lookback", "168", "--horizon", "24", "--val-size", "240", "--test-size", "672",
                "--stride", "24", "--cutoffs", "4", "--spacing", "2160", "--rounds", "3"],
    # 111 ATMs, 120 days of daily history, weekly origins over 98-day test periods, 3 cutoffs; epochs of
    # 10 batches (not 25) for the 30-minute budget: the same validation skill on 22 ATMs, 37 % less time
    "nn5": ["--data", str(DATA / "nn5" / "nn5_daily.csv.gz"), "--history", "120", "--lookback", "56",
            "--horizon", "14", "--val-size", "42", "--test-size", "98", "--stride", "7", "--cutoffs", "3",
            "--spacing", "98", "--rounds", "3", "--set", "steps-per-epoch=10"],
    # cold start (simulations.coldstart): a quarter of the ATMs new in each of 4 rotating folds, keeping 28, 56
    # or 112 days; the others 365 days; weekly origins over the 42 days after each of 4 cutoffs 98 days apart
    "coldstart-nn5": ["--data", str(DATA / "nn5" / "nn5_daily.csv.gz"), "--history", "365", "--lookback", "28",
                      "--horizon", "14", "--val-size", "42", "--test-size", "42", "--stride", "7", "--cutoffs", "4",
                      "--spacing", "98", "--rounds", "3", "--new-sites", "0.25", "--new-history", "28,56,112",
                      "--set", "local-epochs=10"],
    # cold start: a quarter of the stations new in each of 4 rotating folds, keeping 7, 14 or 30 days; the
    # others 180 days; daily origins over the 28 days after each of 4 cutoffs 90 days apart
    "coldstart-beijing": ["--data", str(DATA / "beijing_air" / "pm25_hourly.csv.gz"), "--history", "4320",
                          "--lookback", "168", "--horizon", "24", "--val-size", "240", "--test-size", "672",
                          "--stride", "24", "--cutoffs", "4", "--spacing", "2160", "--rounds", "3",
                          "--new-sites", "0.25", "--new-history", "168,336,720", "--set", "local-epochs=2"],
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in PRESETS:
        print(__doc__, file=sys.stderr)
        return 2
    name, extra = argv[0], argv[1:]
    preset = PRESETS[name]
    if "--data" in extra:  # the user's data replace the preset's, which then need not exist
        preset = preset[2:]
    else:
        data = Path(preset[1])
        if not data.exists():
            print(f"{data} not found: the benchmarks need ../shared/data beside the project", file=sys.stderr)
            return 1
    if "--out" not in extra:
        extra += ["--out", str(APP_DIR / "runs" / f"benchmark-{name}")]
    args = preset + extra
    print("python -m simulations.compare " + " ".join(args), flush=True)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
