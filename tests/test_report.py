"""The comparison report: strict JSON, CSV, Markdown a person reads, real PNG plots."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest

from simulations.report import PER_SITE_COLUMNS, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ["site_a", "site_b", "site_c"]
ARMS = ["naive", "alone_best", "federated", "served", "pooled_oracle"]
# skill_vs_alone per (arm, history), one value per site
SKILL = {
    ("naive", 168): [-0.30, -0.10, -2.50], ("naive", 336): [-0.20, -0.05, -0.40],
    ("federated", 168): [0.02, -0.04, 0.01], ("federated", 336): [0.10, 0.05, -0.01],
    ("served", 168): [0.02, 0.0, 0.01], ("served", 336): [0.10, 0.05, 0.0],
    ("pooled_oracle", 168): [0.05, 0.03, float("nan")], ("pooled_oracle", 336): [0.12, 0.08, 0.02],
    ("alone_best", 168): [0.0, 0.0, 0.0], ("alone_best", 336): [0.0, 0.0, 0.0],
}


def _summary(arm: str, history: int) -> dict:
    values = [v for v in SKILL[arm, history] if not math.isnan(v)]
    ordered = sorted(values)
    return {"arm": arm, "history": history, "median_skill": ordered[len(ordered) // 2],
            "mean_skill": sum(values) / len(values), "share_better": sum(v > 0 for v in values) / len(values),
            "share_worse": sum(v < 0 for v in values) / len(values), "worst_skill": min(values), "sites": len(values)}


def make_report(histories=(168, 336)) -> dict:
    per_site, guard, rounds, cutoffs = [], [], [], []
    for h in histories:
        for i, site in enumerate(SITES):
            alone_mae = 1.0 + i
            for arm in ARMS:
                skill = SKILL[arm, h][i]
                per_site.append({"site": site, "arm": arm, "history": h, "mae": alone_mae * (1 - skill),
                                 "rmse": 1.3 * alone_mae, "mase": float("nan") if arm == "naive" else 0.9,
                                 "smape": 0.2, "skill_vs_alone": skill, "gain_vs_local": skill / 2, "cutoffs": 2})
            for c in range(2):
                serve = "federated" if SKILL["federated", h][i] > 0 else "alone"
                guard.append({"site": site, "history": h, "cutoff": f"2024-0{c + 1}-01", "serve": serve,
                              "val_mae_federated": 1.0, "val_mae_alone": 1.1, "val_win_share": 0.6,
                              "margin": 0.02, "alone_choice": "seasonal_naive_24"})
                for arm in ("federated", "pooled_oracle"):
                    for r in (1, 2, 3):
                        rounds.append({"arm": arm, "history": h, "cutoff": c, "round": r, "site": site,
                                       "val_mae": alone_mae / r})
        cutoffs += [{"index": c, "cutoff": f"2024-0{c + 1}-01", "history": h, "test_points": 24} for c in range(2)]
    return {
        "config": {"data": "demo", "seed": 0, "num-server-rounds": 3, "versions": {"pandas": "3"},
                   "wall_seconds": {arm: 1.5 for arm in ARMS}},
        "per_site": per_site,
        "summary": [_summary(arm, h) for h in histories for arm in ARMS],
        "guard": guard, "rounds": rounds, "cutoffs": cutoffs,
    }


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One report written once for the read-only checks: (report, out_dir, paths)."""
    report, out = make_report(), tmp_path_factory.mktemp("report")
    return report, out, write_report(report, out)


def test_writes_every_file(written):
    _, tmp_path, paths = written
    names = {p.name for p in paths}
    assert names == {"report.json", "per_site.csv", "report.md", "skill_by_site.png", "skill_distribution.png",
                     "skill_vs_history.png", "val_loss_per_round.png"}
    for p in paths:
        assert p.parent == tmp_path and p.stat().st_size > 0
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_is_strict_and_round_trips(written):
    report, tmp_path, _ = written
    loaded = _strict((tmp_path / "report.json").read_text())
    assert loaded["config"] == report["config"]
    assert len(loaded["per_site"]) == len(report["per_site"]) == 2 * 3 * len(ARMS)
    for got, want in zip(loaded["per_site"], report["per_site"]):
        for key, value in want.items():
            assert got[key] is None if isinstance(value, float) and math.isnan(value) else got[key] == value
    for key in ("summary", "guard", "rounds", "cutoffs"):
        assert loaded[key] == report[key]
    # the input is not modified
    assert math.isnan(report["per_site"][0]["mase"])


def test_per_site_csv(written):
    report, tmp_path, _ = written
    with open(tmp_path / "per_site.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == PER_SITE_COLUMNS
    assert len(rows) == len(report["per_site"])
    assert {(r["site"], r["arm"], r["history"]) for r in rows} == {
        (r["site"], r["arm"], str(r["history"])) for r in report["per_site"]}
    nan_row = next(r for r in rows if r["arm"] == "pooled_oracle" and r["site"] == "site_c" and r["history"] == "168")
    assert nan_row["skill_vs_alone"] == ""


def test_markdown_reads_well(written):
    _, tmp_path, _ = written
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# ")
    for arm in ARMS + ["seasonal_naive_24"]:
        assert arm in md
    assert "pooled_oracle (pools private data)" in md
    # every human-facing mention of pooled_oracle carries the label (bar the legend's code span)
    assert md.count("pooled_oracle") == md.count("pooled_oracle (pools private data)")
    # federated at history 336: skills 10 %, 5 %, -1 % -> median 5.0 %, mean 4.7 %, 2 of 3 better
    assert "| federated | 5.0% | 4.7% | 66.7% | 33.3% | -1.0% | 3 |" in md
    # summary sorted by median, best first
    table_336 = md.split("### History 336")[1].split("###")[0]
    assert table_336.index("pooled_oracle") < table_336.index("| federated |") < table_336.index("| naive |")
    # per-site table: alone_best MAE and skills, NaN shown as a dash
    assert "| site_b | 2 | 5.0% | 5.0% | 8.0% |" in md
    assert "| site_c | 3 | 1.0% | 1.0% | – |" in md
    # guard: history 336 serves federated at site_a and site_b (2 cutoffs each), alone at site_c
    assert "| 336 | 6 | 4 | 2 | 2 | 1 | 0 | seasonal_naive_24 (2) |" in md
    for name in ("skill_by_site.png", "skill_distribution.png", "skill_vs_history.png", "val_loss_per_round.png"):
        assert f"]({name})" in md
    assert "demo" in md and "1.5" in md


def test_one_history_skips_skill_vs_history(tmp_path):
    write_report(make_report(), tmp_path)
    assert (tmp_path / "skill_vs_history.png").exists()
    paths = write_report(make_report(histories=(168,)), tmp_path)  # same dir: the stale plot goes
    assert "skill_vs_history.png" not in {p.name for p in paths}
    assert not (tmp_path / "skill_vs_history.png").exists()
    assert "skill_vs_history.png" not in (tmp_path / "report.md").read_text()
    for p in paths:
        assert p.exists() and p.stat().st_size > 0


def test_writing_twice_overwrites(tmp_path):
    report = make_report()
    first = write_report(report, tmp_path)
    changed = copy.deepcopy(report)
    changed["config"]["seed"] = 7
    second = write_report(changed, tmp_path)
    assert first == second
    assert _strict((tmp_path / "report.json").read_text())["config"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in second)


@pytest.mark.parametrize("drop", ["rounds", "guard", "cutoffs"])
def test_missing_sections_do_not_break_the_report(tmp_path, drop):
    report = make_report()
    report[drop] = []
    paths = write_report(report, tmp_path)
    assert (drop == "rounds") == ("val_loss_per_round.png" not in {p.name for p in paths})
