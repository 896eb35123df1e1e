"""Write a comparison report (from `simulations.compare`) as files a person reads.

`write_report(report, out_dir)` writes report.json (strict JSON), per_site.csv, report.md and PNG plots.
Skills are fractions (0.05 = 5 %): skill_vs_alone = 1 - MAE / MAE of the site's best alone option.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import __version__ as _mpl_version, colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from shared.checkpoint import write_atomic, write_json
from shared.guard import SIGN_TEST_P
from simulations import reference

PER_SITE_COLUMNS = ["site", "arm", "history", "mae", "rmse", "mase", "smape", "skill_vs_alone", "gain_vs_local", "cutoffs"]
KEY_ARMS = ["local_only", "pretrained_zero_shot", "pretrained_only", "fedavg_global", "federated",
            "federated_scratch", "served", "pooled_oracle"]
LEGEND = {
    "naive": "repeats the last observed value",
    "auto_ets": "exponential smoothing, model chosen automatically per series",
    "auto_theta": "Theta method, chosen automatically per series",
    "local_only": "the model trained on the site's own data only, from scratch",
    "alone_best": "the best alone option per site (simple, statistical or local_only), chosen on validation MAE: "
                  "the reference of skill_vs_alone",
    "pretrained_zero_shot": "the pretrained model used as is, no training at the site",
    "pretrained_only": "the pretrained encoder fine-tuned at the site alone, no federation",
    "fedavg_global": "the FedAvg global model, not personalised to the site",
    "federated": "federated encoder (from the pretrained one) with the site's private head, personalised",
    "federated_scratch": "as federated, but the encoder starts from random weights (no pretraining)",
    "pooled_oracle": "one model trained on every site's data pooled, then fine-tuned at each site: "
                     "violates privacy, a reference only",
    reference.ARM: reference.CAVEAT,
    "served": "what the guard serves the site: federated or its alone choice, decided on its judging validation windows",
}
_MPL = tuple(int(p) for p in _mpl_version.split(".")[:2])
SKILL_FLOOR = -1.0  # plots show skills below -100 % at -100 %, so one bad baseline does not squash the rest


def arm_label(arm: str) -> str:
    """An arm's name for people; pooled_oracle always carries its privacy warning."""
    return {"pooled_oracle": "pooled_oracle (pools private data)",
            reference.ARM: f"{reference.ARM} (outside model)"}.get(arm, arm)


def arm_meaning(arm: str) -> str:
    if arm.startswith("seasonal_naive_"):
        return f"repeats the value one season ({arm.rsplit('_', 1)[1]} steps) back"
    return LEGEND.get(arm, "(no description)")


def json_safe(obj):
    """JSON-safe copy: NaN and infinities become None, numpy scalars plain Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pct(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.1%}"


def _num(x, fmt: str = ".4g") -> str:
    return "–" if x is None or pd.isna(x) else format(x, fmt)


def _table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; cells are strings already."""
    def line(cells: list) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(row) for row in rows])


def _first(config: dict, *keys, default="–"):
    return next((config[k] for k in keys if config.get(k) not in (None, "")), default)


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows as a frame that always has `columns` (first, in that order), even when empty."""
    frame = pd.DataFrame(rows)
    for col in columns:
        if col not in frame:
            frame[col] = pd.Series(dtype=float)
    return frame[columns + [c for c in frame.columns if c not in columns]]


def _by_median(per_site: pd.DataFrame) -> list[str]:
    """Arms (other than the reference alone_best) with a finite skill, best median first."""
    skills = per_site[per_site["arm"] != "alone_best"].dropna(subset=["skill_vs_alone"])
    return list(skills.groupby("arm")["skill_vs_alone"].median().sort_values(ascending=False).index)


def _md_config(report: dict, per_site: pd.DataFrame) -> list[str]:
    """Title and the essentials of the run: data, sites, histories, cutoffs, rounds, seed, wall time."""
    config = report.get("config", {})
    cutoffs = _frame(report.get("cutoffs", []), ["cutoff", "history"])
    rounds = _first(config, "rounds", "num_server_rounds", "num-server-rounds",
                    default=max((r["round"] for r in report.get("rounds", [])), default="–"))
    out = ["# Federated forecasting: comparison report", "",
           f"- data: {_first(config, 'data', 'data_path', 'data-path')}",
           f"- sites: {per_site['site'].nunique()}; histories (points per site): "
           + ", ".join(map(str, sorted(per_site["history"].dropna().unique())))]
    for h, g in cutoffs.groupby("history"):
        dates = g["cutoff"].astype(str)
        out.append(f"- cutoffs at history {h}: {len(g)} ({dates.min()} … {dates.max()})")
    out += [f"- federated rounds: {rounds}; seed: {_first(config, 'seed', 'seeds')}",
            "- every option, seed and package version: report.json; per-site metrics: per_site.csv", ""]
    if wall := config.get("wall_seconds"):
        out += ["Wall time per arm:", "", _table(["arm", "seconds"], [[arm_label(a), _num(s, ".1f")] for a, s in wall.items()]), ""]
    return out


def _md_skill(summary: pd.DataFrame, per_site: pd.DataFrame) -> list[str]:
    """The summary table per history (best median first), then skill per site for the key arms."""
    out = ["## Skill versus the best alone option", "",
           "skill = 1 - MAE / MAE of the site's best alone option (positive: better than going alone). "
           "better / worse: share of sites with skill above / below 0.", ""]
    cols = ["median_skill", "mean_skill", "share_better", "share_worse", "worst_skill"]
    for h in sorted(summary["history"].dropna().unique()):
        g = summary[summary["history"] == h].sort_values("median_skill", ascending=False, na_position="last")
        rows = [[arm_label(r["arm"])] + [_pct(r.get(c)) for c in cols] + [_num(r.get("sites"), ".0f")] for _, r in g.iterrows()]
        out += [f"### History {h}", "", _table(["arm", "median", "mean", "better", "worse", "worst", "sites"], rows), ""]
        undefined = int(g["skill_undefined"].fillna(0).max()) if "skill_undefined" in g else 0  # older reports lack it
        if undefined:
            out += [f"Skill is undefined at {undefined} site(s) of history {h}, where alone_best forecast the test "
                    "period without error (a constant series); the medians leave them out.", ""]
    out += ["## Per site", "", "Skill versus the best alone option; alone_best MAE is the reference's own test MAE.", ""]
    arms = [a for a in KEY_ARMS if a in set(per_site["arm"])]
    for h in sorted(per_site["history"].dropna().unique()):
        g = per_site[per_site["history"] == h].set_index(["site", "arm"])
        skill, mae = g["skill_vs_alone"].to_dict(), g["mae"].to_dict()
        rows = [[site, _num(mae.get((site, "alone_best")))] + [_pct(skill.get((site, a))) for a in arms]
                for site in sorted(g.index.unique("site"))]
        out += [f"### History {h}, per site", "", _table(["site", "alone_best MAE"] + [arm_label(a) for a in arms], rows), ""]
    return out


def _md_guard(guard: pd.DataFrame) -> list[str]:
    """Per history: how often, and at how many sites, the guard serves federated (serve == "federated") or alone."""
    rows = []
    for h, g in guard.groupby("history"):
        fed = g["serve"] == "federated"
        share = fed.groupby(g["site"]).mean()  # per site: share of cutoffs served federated
        choices = g.loc[~fed, "alone_choice"].value_counts()
        counts = [len(g), fed.sum(), (~fed).sum(), (share == 1).sum(), (share == 0).sum(), ((share > 0) & (share < 1)).sum()]
        rows.append([str(h)] + [str(int(n)) for n in counts] + [", ".join(f"{a} ({n})" for a, n in choices.items()) or "–"])
    return ["## Guard decisions", "",
            "At each site and cutoff the guard serves federated or the site's alone choice, on its judging validation "
            f"windows: federated only with a MAE at least the margin lower and wins that pass a sign test (p <= {SIGN_TEST_P}).", "",
            _table(["history", "decisions", "serve federated", "serve alone", "sites always federated",
                    "sites always alone", "sites mixed", "alone choices served"], rows), ""]


def markdown(report: dict, plots: list[Path]) -> str:
    """The human-readable report (report.md)."""
    per_site = _frame(report.get("per_site", []), PER_SITE_COLUMNS)
    summary = _frame(report.get("summary", []), ["arm", "history", "median_skill"])
    guard = _frame(report.get("guard", []), ["site", "history", "serve", "alone_choice"])
    out = _md_config(report, per_site) + _md_skill(summary, per_site) + _md_guard(guard)
    if plots:
        out += ["## Plots", ""] + [f"![{p.stem}]({p.name})\n" for p in plots]
    order = list(LEGEND)
    arms = sorted(set(per_site["arm"]) | set(summary["arm"]) | set(report.get("config", {}).get("wall_seconds", {})),
                  key=lambda a: (order.index(a) if a in order else 0.5 if a.startswith("seasonal_naive_") else len(order), len(a), a))
    out += ["## Arms", ""] + [f"- `{arm_label(a)}`: {arm_meaning(a)}" for a in arms]
    return "\n".join(out) + "\n"


def _skill_axis(ax, values: pd.Series) -> None:
    """Percent axis with reference lines at 0 and -2 %; says so when skills were clipped."""
    ax.axvline(0, color="black", lw=1)
    ax.axvline(-0.02, color="grey", lw=1, ls="--")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    clipped = (values < SKILL_FLOOR).any()
    ax.set_xlabel("skill vs best alone option" + (" (below -100 % shown at -100 %)" if clipped else ""))
    ax.grid(axis="x", alpha=0.3)


def plot_skill_by_site(per_site: pd.DataFrame, colors: dict) -> Figure:
    """Dot plot: one row per site, one dot per key arm (all arms if none is there), best first in the legend."""
    arms, sites = _by_median(per_site), sorted(per_site["site"].unique(), reverse=True)
    arms = [a for a in arms if a in KEY_ARMS] or arms
    fig = Figure(figsize=(10, 1.5 + len(sites) * (0.15 + 0.04 * len(arms))), dpi=100)
    ax = fig.subplots()
    y = {s: i for i, s in enumerate(sites)}
    for k, arm in enumerate(arms):
        g = per_site[per_site["arm"] == arm].dropna(subset=["skill_vs_alone"])
        offset = (k - (len(arms) - 1) / 2) * 0.7 / max(len(arms), 1)
        ax.scatter(g["skill_vs_alone"].clip(lower=SKILL_FLOOR), g["site"].map(y) + offset, s=20,
                   color=colors[arm], label=arm_label(arm), zorder=3)
    ax.set_yticks(range(len(sites)), sites)
    ax.set_ylim(-0.5, len(sites) - 0.5)
    for i in range(len(sites) - 1):
        ax.axhline(i + 0.5, color="grey", lw=0.5, alpha=0.4)
    _skill_axis(ax, per_site.loc[per_site["arm"].isin(arms), "skill_vs_alone"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title(f"Skill per site (history {per_site['history'].iloc[0]})")
    return fig


def plot_skill_distribution(per_site: pd.DataFrame, colors: dict) -> Figure:
    """Box plot with the sites as points, one box per arm, best median on top."""
    arms = _by_median(per_site)[::-1]
    data = [per_site.loc[per_site["arm"] == a, "skill_vs_alone"].dropna().clip(lower=SKILL_FLOOR) for a in arms]
    fig = Figure(figsize=(9, 1.5 + 0.45 * len(arms)), dpi=100)
    ax = fig.subplots()
    horizontal = {"orientation": "horizontal"} if _MPL >= (3, 10) else {"vert": False}  # vert: deprecated in 3.11
    ax.boxplot(data, widths=0.6, showfliers=False, medianprops={"color": "black"}, **horizontal)
    rng = np.random.default_rng(0)
    for i, (arm, values) in enumerate(zip(arms, data), start=1):
        ax.scatter(values, i + rng.uniform(-0.15, 0.15, len(values)), s=14, color=colors[arm], alpha=0.8, zorder=3)
    ax.set_yticks(range(1, len(arms) + 1), [arm_label(a) for a in arms])
    _skill_axis(ax, per_site.loc[per_site["arm"].isin(arms), "skill_vs_alone"])
    ax.set_title(f"Skill across sites (history {per_site['history'].iloc[0]})")
    return fig


def plot_skill_vs_history(summary: pd.DataFrame, colors: dict) -> Figure:
    """Median skill per arm against the history each site had."""
    fig = Figure(figsize=(9, 5), dpi=100)
    ax = fig.subplots()
    top = summary[summary["history"] == summary["history"].max()].sort_values("median_skill", ascending=False)
    for arm in [a for a in top["arm"] if a != "alone_best"]:
        g = summary[summary["arm"] == arm].sort_values("history")
        ax.plot(g["history"], g["median_skill"], marker="o", color=colors[arm], label=arm_label(arm))
    ax.axhline(0, color="black", lw=1)
    ax.axhline(-0.02, color="grey", lw=1, ls="--")
    ax.set_xticks(sorted(summary["history"].unique()))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(xlabel="history (points per site)", ylabel="median skill vs best alone option", title="Skill versus history")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def plot_val_loss(rounds: pd.DataFrame, colors: dict) -> Figure:
    """Median validation MAE (over sites and cutoffs) per federated round, one line per arm."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    for arm, g in rounds.groupby("arm"):
        curve = g.groupby("round")["val_mae"].median()
        ax.plot(curve.index, curve.values, marker="o", color=colors[arm], label=arm_label(arm))
    ax.set(xlabel="round", ylabel="validation MAE (median over sites, cutoffs)",
           title=f"Validation MAE per round (history {rounds['history'].iloc[0]})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def arm_colors(arms: list[str]) -> dict:
    """A colour per arm, the key arms first (tab10's clearest colours, then tab20's light ones)."""
    ordered = [a for a in KEY_ARMS if a in arms] + sorted(set(arms) - set(KEY_ARMS))
    return {arm: colormaps["tab20"]((2 * i) % 20 + (i // 10) % 2) for i, arm in enumerate(ordered)}


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Write report.json, per_site.csv, report.md and the PNG plots into out_dir; return the paths written.

    A plot without data (skill_vs_history with one history, val_loss without rounds) is not written,
    and a stale copy from an earlier report in out_dir is removed.
    """
    out = Path(out_dir)
    per_site = _frame(report.get("per_site", []), PER_SITE_COLUMNS)
    summary = _frame(report.get("summary", []), ["arm", "history", "median_skill"])
    rounds = _frame(report.get("rounds", []), ["arm", "history", "round", "val_mae"]).dropna(subset=["val_mae"])
    colors = arm_colors(sorted(set(per_site["arm"]) | set(summary["arm"]) | set(rounds["arm"])))

    latest = per_site[per_site["history"] == per_site["history"].max()]
    plots = [  # (file, whether there is something to show, how to draw it)
        ("skill_by_site.png", len(latest) > 0, lambda: plot_skill_by_site(latest, colors)),
        ("skill_distribution.png", len(latest) > 0, lambda: plot_skill_distribution(latest, colors)),
        ("skill_vs_history.png", summary["history"].nunique() >= 2, lambda: plot_skill_vs_history(summary, colors)),
        ("val_loss_per_round.png", len(rounds) > 0,
         lambda: plot_val_loss(rounds[rounds["history"] == rounds["history"].max()], colors)),
    ]
    written = []
    for name, wanted, draw in plots:
        if not wanted:
            (out / name).unlink(missing_ok=True)  # a stale plot from an earlier report would mislead
            continue
        save_figure(draw(), out / name)
        written.append(out / name)

    write_json(out / "report.json", json_safe(report))
    write_atomic(out / "per_site.csv", lambda f: f.write(per_site.to_csv(index=False).encode()))
    write_atomic(out / "report.md", lambda f: f.write(markdown(report, written).encode()))
    return [out / "report.json", out / "per_site.csv", out / "report.md"] + written
