"""What other serving rules would have given, from a comparison's report (no training, no Flower).

    python -m studies.guard_rules runs/benchmark-beijing/report.json [more reports]

The report's `guard` rows hold, per site and cutoff, the judging validation MAE of the federated
model and of the site's alone_best, and what the guard served; `per_cutoff` holds every arm's test
MAE. From them this prints, per rule, at how many site-cutoffs the federated model would be
served and the served skill over alone_best (each site's mean over cutoffs, as the report's):
- `guard`: the product's guard, as the run decided it (sign test and margin);
- `margin`: federated wherever its judging MAE is `margin` below alone_best's, no sign test;
- `always`: federated everywhere (the `federated` arm).
A check of how much the guard's caution costs, not a way to choose it: the rule was fixed before
these test windows were seen.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from collections import defaultdict

RULES = ("guard", "margin", "always")


def serves_federated(rule: str, guard: dict) -> bool:
    if rule == "guard":
        return guard["serve"] == "federated"
    if rule == "margin":
        return guard["val_mae_federated"] < (1 - guard["margin"]) * guard["val_mae_alone"]
    return True


def rule_summary(report: dict, rule: str) -> dict:
    """{served_federated, site_cutoffs, median_skill, worst_skill, worse_than_2pct} of one rule."""
    test = {(r["site"], r["cutoff"], r["arm"]): r["mae"] for r in report["per_cutoff"]}
    skills, chosen = defaultdict(list), 0
    for g in report["guard"]:
        fed = serves_federated(rule, g)
        chosen += fed
        alone = test[(g["site"], g["cutoff"], "alone_best")]
        skills[g["site"]].append(1 - test[(g["site"], g["cutoff"], "federated" if fed else "alone_best")] / alone)
    by_site = [statistics.mean(v) for v in skills.values()]
    return {"served_federated": chosen, "site_cutoffs": len(report["guard"]),
            "median_skill": statistics.median(by_site), "worst_skill": min(by_site),
            "worse_than_2pct": sum(s < -0.02 for s in by_site)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", help="report.json (or .json.gz) files of simulations.compare")
    for path in parser.parse_args(argv).reports:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
            report = json.load(f)
        for rule in RULES:
            s = rule_summary(report, rule)
            print(f"{path}  {rule:<7} federated at {s['served_federated']:>3} of {s['site_cutoffs']}  "
                  f"median {s['median_skill']:+.1%}  worst {s['worst_skill']:+.1%}  "
                  f"sites worse than -2 %: {s['worse_than_2pct']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
