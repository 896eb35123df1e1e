"""The per-site results table, from the rows the strategy recorded."""

from __future__ import annotations


def site_table(rows: list[dict]) -> list[dict]:
    """One row per site from its latest evaluation.

    `alone` is the better of the site's two alone options (best simple forecast, local-only model)
    as the site would choose it: on validation MAE. `gain` = 1 - federated MAE / that option's
    test MAE (positive: the federation helps this site).
    """
    latest: dict[str, dict] = {}
    for row in rows:
        if row["phase"] == "evaluate" and "error" not in row:
            latest[row["site"]] = row
    table = []
    for site, row in sorted(latest.items()):
        simple = "naive" if row["simple-lag"] == 1 else f"seasonal_naive_{int(row['simple-lag'])}"
        use_local = row["local-val-mae"] < row["simple-val-mae"]
        alone_mae = row["local-test-mae"] if use_local else row["simple-test-mae"]
        table.append({
            "site": site,
            "round": row["round"],
            "simple": simple,
            "simple_mae": row["simple-test-mae"],
            "local_only_mae": row["local-test-mae"],
            "federated_mae": row["test-mae"],
            "alone": "local_only" if use_local else simple,
            "gain": 1.0 - row["test-mae"] / alone_mae,
        })
    return table


def format_table(table: list[dict]) -> str:
    """Plain-text table for a terminal."""
    header = f"{'site':<12} {'simple':>22} {'local-only':>11} {'federated':>10} {'alone (val)':>22} {'gain':>7}"
    lines = [header, "-" * len(header)]
    for r in table:
        lines.append(f"{r['site']:<12} {r['simple']:>13} {r['simple_mae']:>8.3f} {r['local_only_mae']:>11.3f} "
                     f"{r['federated_mae']:>10.3f} {r['alone']:>22} {r['gain']:>+7.1%}")
    return "\n".join(lines)
