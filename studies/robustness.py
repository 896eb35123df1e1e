"""What one hostile site does to each aggregation, and what robustness costs when nobody attacks.

    ./dev python -m studies.robustness --out runs/robustness [--cutoffs 2] [--max-update-norm N]

Runs the Beijing preset's federated arm (simulations.benchmark beijing --arms federated, with
local-epochs=2 so that every station moves the encoder in every round) once per aggregation setting,
without and with an attacker (`--attack times-100`: the first station by name sends 100 times its
honest update in every round): FedAvg, FedAvg with the server's update bound (`max-update-norm`),
coordinate-wise median, trimmed mean. The bound, unless given, is 5 times the largest update norm of
the FedAvg run without attacker (as a coordinator would set it from a pilot run). Writes
OUT/<setting>[-attack]/ (each a comparison report) and OUT/robustness.json: per run, the median over
stations of the federated and served skill over alone_best, the replies rejected, the largest accepted
update norm and the wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shared.checkpoint import write_json
from simulations.benchmark import main as benchmark

SETTINGS = {  # name: run-config settings
    "fedavg": [],
    "fedavg-bounded": ["max-update-norm={bound}"],
    "median": ["aggregation=median"],
    "trimmed-mean": ["aggregation=trimmed-mean"],
}


def figures(report: dict) -> dict:
    """What the table shows of one comparison report."""
    skill = {row["arm"]: row["median_skill"] for row in report["summary"]}
    rounds = report["rounds"]
    return {"federated": skill["federated"], "served": skill["served"],
            "rejected": sum("error" in r for r in rounds),
            "largest_accepted_norm": max((r["update_norm"] for r in rounds if r.get("update_norm") is not None),
                                         default=None),
            "wall_seconds": report["config"]["total_seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cutoffs", type=int, default=2)
    parser.add_argument("--max-update-norm", type=float, default=0.0, help="the bound of the fedavg-bounded "
                        "setting (default: 5 times the largest norm of the unattacked FedAvg run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows, bound = [], args.max_update_norm
    for name, changes in SETTINGS.items():
        for attacked in (False, True):
            folder = out / (name + "-attack" * attacked)
            extra = ["--arms", "federated", "--cutoffs", str(args.cutoffs), "--out", str(folder),
                     "--set", "local-epochs=2", "--set", "min-train-nodes=11"]  # room for one rejected station
            for change in changes:
                extra += ["--set", change.format(bound=bound)]
            if attacked:
                extra += ["--attack", "times-100"]
            if (folder / "report.json").exists() and json.loads((folder / "report.json").read_text())["config"].get(
                    "complete"):
                print(f"{folder}: done before, reused", flush=True)
            elif benchmark(["beijing", *extra, *(["--resume"] if folder.exists() else [])]) != 0:
                return 1
            report = json.loads((folder / "report.json").read_text())
            rows.append({"aggregation": name, "attack": "times-100" if attacked else "none", **figures(report)})
            if not bound:  # the first run: FedAvg, nobody attacking
                bound = float(f"{5 * rows[0]['largest_accepted_norm']:.2g}")
            write_json(out / "robustness.json", {"command": "python -m studies.robustness " + " ".join(
                sys.argv[1:] if argv is None else argv), "cutoffs": args.cutoffs,
                "max_update_norm": bound, "when": time.strftime("%Y-%m-%d"), "runs": rows})
    print(f"max-update-norm of fedavg-bounded: {bound:g}")
    print("| aggregation | attacker | federated | served | replies rejected | largest accepted update norm |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        norm = "–" if r["largest_accepted_norm"] is None else f"{r['largest_accepted_norm']:.3g}"
        print(f"| {r['aggregation']} | {r['attack']} | {r['federated']:+.1%} | {r['served']:+.1%} | "
              f"{r['rejected']} | {norm} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
