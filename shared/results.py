"""A site's evaluation as a typed record, its one codec to and from reply metrics, and the per-site table.

An evaluate reply carries flat metrics (Flower's MetricRecord holds numbers under string keys) and
a little text (a ConfigRecord). `SiteEvaluation.to_reply` builds them and `SiteEvaluation.from_row`
reads them back (from a reply, or from a per_site.json row the server recorded); nothing else
knows the key format:
  "<arm>:val-mae", "<arm>:test-<metric>"   every arm the site scored (shared.metrics.METRICS)
  "guard:<field>"                           the guard's figures (shared.guard.GuardDecision)
  "filled-points", "num-examples"           gaps filled in its series, its test windows
  "short-history:<points>:<won|lost>"       1 if the shared forecast beat (lost by more than 5 % to) the
                                            site's short-history alone choice at that length (prior-histories)
  text: "alone-choice", "serve"             its best alone option, what its guard serves
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from shared.guard import GuardDecision, Prior
from shared.metrics import METRICS

GUARD_PREFIX = "guard:"
SHORT_PREFIX = "short-history:"
SHORT_FIELDS = ("won", "lost")
GUARD_FIELDS = tuple(f.name for f in fields(GuardDecision) if f.name != "serve")  # serve travels as text


def skill(mae: float, reference_mae: float) -> float:
    """1 - mae / reference_mae: the share of the reference's error removed; NaN where the
    reference has no error (a constant series forecast exactly), as no share of zero is defined."""
    return 1.0 - mae / reference_mae if reference_mae > 0 else math.nan


@dataclass(frozen=True)
class ArmScores:
    """One arm's errors at a site: MAE on validation and every metric on test."""

    val_mae: float
    test: dict[str, float]

    @classmethod
    def of(cls, result: dict) -> ArmScores:
        """From shared.scoring.scores()."""
        return cls(float(result["val"]["mae"]), {m: float(result["test"][m]) for m in METRICS})


@dataclass(frozen=True)
class SiteEvaluation:
    """What a site reports after an evaluation: every arm's errors and its guard's decision."""

    arms: dict[str, ArmScores]  # the alone options, alone_best, federated, served
    guard: GuardDecision
    alone_choice: str
    filled_points: int = 0
    test_windows: int = 0
    short_history: dict[int, Prior] = field(default_factory=dict)  # history length -> its report (sites=1)

    def to_reply(self) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, text) of an evaluate reply."""
        metrics = {"num-examples": self.test_windows, "filled-points": self.filled_points,
                   **{GUARD_PREFIX + _kebab(name): float(getattr(self.guard, name)) for name in GUARD_FIELDS}}
        metrics |= {f"{SHORT_PREFIX}{h}:{name}": float(getattr(prior, name))
                    for h, prior in self.short_history.items() for name in SHORT_FIELDS}
        for arm, score in self.arms.items():
            metrics[f"{arm}:val-mae"] = score.val_mae
            metrics |= {f"{arm}:test-{m}": v for m, v in score.test.items()}
        return metrics, {"alone-choice": self.alone_choice, "serve": self.guard.serve}

    @classmethod
    def from_row(cls, row: Mapping) -> SiteEvaluation | None:
        """The evaluation in a reply's metrics and text (merged, as in a per_site.json row); None
        when the site reported no figures (reports = minimal) or the row is an error."""
        if "error" in row or "alone-choice" not in row:
            return None
        arms = sorted({key.split(":")[0] for key in row if key.endswith(":test-mae")})
        guard = GuardDecision(serve=str(row["serve"]), **{
            name: (int if name == "windows" else float)(row[GUARD_PREFIX + _kebab(name)]) for name in GUARD_FIELDS})
        return cls({arm: ArmScores(float(row[f"{arm}:val-mae"]), {m: float(row[f"{arm}:test-{m}"]) for m in METRICS})
                    for arm in arms}, guard, str(row["alone-choice"]), int(row.get("filled-points", 0)),
                   int(row.get("num-examples", 0)),
                   _short_history(row))


def _short_history(row: Mapping) -> dict[int, Prior]:
    counts: dict[int, dict[str, int]] = {}
    for key, value in row.items():
        if key.startswith(SHORT_PREFIX):
            history, name = key[len(SHORT_PREFIX):].split(":")
            counts.setdefault(int(history), {})[name] = int(value)
    return {h: Prior(**{name: c[name] for name in SHORT_FIELDS}, sites=1) for h, c in sorted(counts.items())}


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def site_table(rows: list[dict]) -> list[dict]:
    """One row per site from its latest evaluation in the server's per-site rows.

    `simple` is the best naive or seasonal-naive forecast on validation; `alone` the best of every
    option the site has alone (simple, statistical, local-only) on validation; `skill_vs_alone` =
    1 - federated MAE / alone's test MAE, `served_skill_vs_alone` the same for what the guard serves
    (NaN where alone's test MAE is 0).
    """
    latest: dict[str, tuple[int, SiteEvaluation]] = {}
    for row in rows:
        if row["phase"] == "evaluate" and (evaluation := SiteEvaluation.from_row(row)) is not None:
            latest[row["site"]] = (row["round"], evaluation)
    table = []
    for site, (server_round, ev) in sorted(latest.items()):
        simple = min((a for a in ev.arms if a == "naive" or a.startswith("seasonal_naive")),
                     key=lambda a: ev.arms[a].val_mae)
        alone_mae = ev.arms["alone_best"].test["mae"]
        table.append({
            "site": site,
            "round": server_round,
            "simple": simple,
            "simple_mae": ev.arms[simple].test["mae"],
            "local_only_mae": ev.arms["local_only"].test["mae"],
            "alone": ev.alone_choice,
            "alone_mae": alone_mae,
            "federated_mae": ev.arms["federated"].test["mae"],
            "serve": ev.guard.serve,
            "skill_vs_alone": skill(ev.arms["federated"].test["mae"], alone_mae),
            "served_skill_vs_alone": skill(ev.arms["served"].test["mae"], alone_mae),
        })
    return table


def format_table(table: list[dict]) -> str:
    """Plain-text table for a terminal."""
    header = (f"{'site':<10} {'best simple (val)':>26} {'local-only':>10} {'alone best (val)':>27} "
              f"{'federated':>9} {'skill':>7}  {'guard serves':<12} {'skill':>7}")
    lines = [header, "-" * len(header)]
    for r in table:
        lines.append(f"{r['site']:<10} {r['simple']:>18} {r['simple_mae']:>7.3f} {r['local_only_mae']:>10.3f} "
                     f"{r['alone']:>18} {r['alone_mae']:>8.3f} {r['federated_mae']:>9.3f} "
                     f"{_percent(r['skill_vs_alone'])}  {r['serve']:<12} {_percent(r['served_skill_vs_alone'])}")
    return "\n".join(lines)


def _percent(value: float) -> str:
    return f"{value:>+7.1%}" if math.isfinite(value) else f"{'n/a':>7}"


def _median(values: list[float]) -> str:
    defined = [v for v in values if math.isfinite(v)]
    undefined = len(values) - len(defined)
    text = f"{statistics.median(defined):+.1%}" if defined else "n/a"
    return text + (f" ({undefined} site{'s' * (undefined > 1)} without: alone's test MAE is 0)" if undefined else "")


def format_summary(summary: dict) -> str:
    """A run's summary.json for a terminal: the per-site table, the sites that did not answer, the medians."""
    table = summary["sites"]
    lines = [format_table(table)] if table else ["no site reported its figures (reports = minimal)"]
    lines += [f"missing: {row['site']} in round {row['round']} ({row['phase']}): {row['error']}"
              for row in summary.get("missing", [])]
    if table:
        lines.append(f"\nmedian skill over the best alone option: federated "
                     f"{_median([r['skill_vs_alone'] for r in table])}, served "
                     f"{_median([r['served_skill_vs_alone'] for r in table])}")
    return "\n".join(lines)


def new_site_prior(rows: list[dict]) -> dict[int, Prior]:
    """The new-site guard's prior from the server's per-site rows: per history length, every site's latest
    report summed (shared.guard.Prior)."""
    latest: dict[str, SiteEvaluation] = {}
    for row in rows:
        if row["phase"] == "evaluate" and (evaluation := SiteEvaluation.from_row(row)) is not None:
            latest[row["site"]] = evaluation
    prior: dict[int, Prior] = {}
    for evaluation in latest.values():
        for history, report in evaluation.short_history.items():
            prior[history] = prior.get(history, Prior()) + report
    return dict(sorted(prior.items()))
