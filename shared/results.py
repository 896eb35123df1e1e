"""The per-site results table, from the evaluation rows the server recorded."""

from __future__ import annotations

import statistics


def arms_of(row: dict) -> list[str]:
    """Arm names in an evaluation row (keys look like 'federated:test-mae')."""
    return sorted({key.split(":")[0] for key in row if key.endswith(":test-mae")})


def site_table(rows: list[dict]) -> list[dict]:
    """One row per site from its latest evaluation.

    `simple` is the best naive or seasonal-naive forecast on validation; `alone` the best of every
    option the site has alone (simple, statistical, local-only) on validation; `gain` = 1 -
    federated MAE / alone's test MAE, `served_gain` the same for what the guard serves.
    """
    latest: dict[str, dict] = {}
    for row in rows:
        if row["phase"] == "evaluate" and "error" not in row and arms_of(row):  # reports=minimal: no figures
            latest[row["site"]] = row
    table = []
    for site, row in sorted(latest.items()):
        simple = min((a for a in arms_of(row) if a == "naive" or a.startswith("seasonal_naive")),
                     key=lambda a: row[f"{a}:val-mae"])
        alone_mae = row["alone_best:test-mae"]
        table.append({
            "site": site,
            "round": row["round"],
            "simple": simple,
            "simple_mae": row[f"{simple}:test-mae"],
            "local_only_mae": row["local_only:test-mae"],
            "alone": row["alone-choice"],
            "alone_mae": alone_mae,
            "federated_mae": row["federated:test-mae"],
            "serve": row["serve"],
            "gain": 1.0 - row["federated:test-mae"] / alone_mae,
            "served_gain": 1.0 - row["served:test-mae"] / alone_mae,
        })
    return table


def format_table(table: list[dict]) -> str:
    """Plain-text table for a terminal."""
    header = (f"{'site':<10} {'best simple (val)':>26} {'local-only':>10} {'alone best (val)':>27} "
              f"{'federated':>9} {'gain':>7}  {'guard serves':<12} {'gain':>7}")
    lines = [header, "-" * len(header)]
    for r in table:
        lines.append(f"{r['site']:<10} {r['simple']:>18} {r['simple_mae']:>7.3f} {r['local_only_mae']:>10.3f} "
                     f"{r['alone']:>18} {r['alone_mae']:>8.3f} {r['federated_mae']:>9.3f} {r['gain']:>+7.1%}  "
                     f"{r['serve']:<12} {r['served_gain']:>+7.1%}")
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """A run's summary.json for a terminal: the per-site table, the sites that did not answer, the medians."""
    table = summary["sites"]
    lines = [format_table(table)] if table else ["no site reported its figures (reports = minimal)"]
    lines += [f"missing: {row['site']} in round {row['round']} ({row['phase']}): {row['error']}"
              for row in summary.get("missing", [])]
    if table:
        lines.append(f"\nmedian gain over the best alone option: federated "
                     f"{statistics.median(r['gain'] for r in table):+.1%}, served "
                     f"{statistics.median(r['served_gain'] for r in table):+.1%}")
    return "\n".join(lines)
