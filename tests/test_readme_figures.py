"""The figures of the README and docs/ say what the committed benchmark reports measured."""

import gzip
import itertools
import json
import re
from pathlib import Path

import pytest

from simulations.benchmark import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def _doc(name: str) -> str:
    """The text of README.md or of docs/<name>."""
    return (ROOT / name).read_text() if name == "README.md" else (ROOT / "docs" / name).read_text()


def _report(name: str) -> dict:
    folder = ROOT / "benchmarks" / name
    if (folder / "report.json.gz").exists():
        return json.loads(gzip.decompress((folder / "report.json.gz").read_bytes()))
    return json.loads((folder / "report.json").read_text())


def _table_after(text: str, marker: str) -> list[list[str]]:
    """The cells of the first Markdown table after `marker`, header and rule left out."""
    lines = text[text.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| arm |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("*").strip() for cell in line.strip("|").split("|")])
    return rows


def _percents(cell: str) -> list[float]:
    return [float(part.replace("−", "-").replace("%", "").strip()) for part in cell.split("/")]


@pytest.mark.parametrize("name, marker", [("beijing", "## Beijing PM2.5, 12 stations"),
                                          ("nn5", "## NN5, 111 ATMs")])
def test_benchmark_table_matches_its_report(name, marker):
    report = _report(name)
    summary = {s["arm"]: s for s in report["summary"]}
    worst = {}
    for row in report["per_site"]:
        worst[row["arm"]] = min(worst.get(row["arm"], float("inf")), row["skill_vs_alone"])
    rows = _table_after(_doc("benchmarks.md"), marker)
    assert len(rows) >= 10
    seen = set()
    for label, median, better, worse, worst_cell in rows:
        arm = label.split(" (")[0]
        base, *suffixes = [a.strip() for a in arm.split("/")]  # "seasonal_naive_24 / _168"
        arms = [base] + [base.rsplit("_", 1)[0] + s for s in suffixes]
        for index, arm in enumerate(arms):
            assert arm in summary, (name, arm)
            seen.add(arm)
            assert _percents(median)[index] == round(100 * summary[arm]["median_skill"], 1), (name, arm)
            assert _percents(worst_cell)[index] == round(100 * worst[arm], 1), (name, arm)
        assert _percents(better)[0] == round(100 * summary[arms[0]]["share_better"]), (name, arms[0])
        assert _percents(worse)[0] == round(100 * summary[arms[0]]["share_worse"]), (name, arms[0])
    assert seen == set(summary) - {"alone_best"}, name


def test_readme_standing_table_matches_the_reports():
    """The README's one table: each arm's median skill on both benchmarks ("—": the arm is not in that
    report), every arm but alone_best listed, and how often the guard served the federated model."""
    reports = {name: _report(name) for name in ("beijing", "nn5")}
    summaries = {name: {s["arm"]: s for s in r["summary"]} for name, r in reports.items()}
    rows = _table_after(_doc("README.md"), "## Where it stands")
    seen = {name: set() for name in reports}
    for label, *cells in rows:
        base, *suffixes = [a.strip() for a in label.split(" (")[0].strip("*").split("/")]
        arms = [base] + [base.rsplit("_", 1)[0] + s for s in suffixes]
        for name, cell in zip(reports, cells, strict=True):
            if cell == "—":
                assert not set(arms) & set(summaries[name]), (name, label)
                continue
            for arm, median in zip(arms, _percents(cell), strict=True):
                assert median == round(100 * summaries[name][arm]["median_skill"], 1), (name, arm)
                seen[name].add(arm)
    section = _doc("README.md").split("## Where it stands")[1].split("\n## ")[0]
    for name, report in reports.items():
        assert seen[name] == set(summaries[name]) - {"alone_best"}, name
        served = sum(g["serve"] == "federated" for g in report["guard"])
        assert f"{served} of {len(report['guard'])}" in " ".join(section.split()), name  # the count the text gives


def test_ceiling_table_matches_its_reports():
    reports = {}
    for name in ("beijing", "nn5"):
        folder = ROOT / "benchmarks" / name
        raw = (gzip.decompress((folder / "ceiling.json.gz").read_bytes()) if (folder / "ceiling.json.gz").exists()
               else (folder / "ceiling.json").read_bytes())
        reports[name] = json.loads(raw)["summary"]
    text = _doc("studies.md")
    lines = text[text.index("## What pooling could give at all"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| median skill vs stat_choice"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
    arms = [line.split("`")[1] for line in rows]
    assert sorted(arms) == sorted(set(reports["beijing"]) - {"stat_choice"})
    for line, arm in zip(rows, arms):
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        for name, cell in zip(("beijing", "nn5"), cells):
            median, worst = _percents(cell.replace("(", "/").replace(")", ""))[:2]
            assert median == round(100 * reports[name][arm]["median_skill"], 1), (name, arm)
            assert worst == round(100 * reports[name][arm]["worst_skill"], 1), (name, arm)


def test_covariates_paragraph_matches_its_report():
    summary = json.loads((ROOT / "benchmarks" / "beijing" / "ceiling-covariates.json").read_text())["summary"]
    text = _doc("studies.md")
    paragraph = text[text.index("**Past weather and pollutants**"):].split("\n\n")[0]
    after = paragraph[paragraph.index("`pooled_ridge_on_stat_covariates`"):]
    figures = [float(f.replace("−", "-")) for f in re.findall(r"([−+]\d+\.\d) %", after)][:4]
    plain, chosen = summary["pooled_ridge_on_stat_covariates"], summary["pooled_ridge_on_stat_covariates_if_better"]
    assert figures == [round(100 * v, 1) for v in (plain["median_skill"], plain["worst_skill"],
                                                   chosen["median_skill"], chosen["mean_skill"])]


def _ceiling(name: str, history: int) -> dict:
    """Summary of a committed ceiling report: the preset's history in ceiling.json, others in ceiling-history-H.json."""
    folder = ROOT / "benchmarks" / name
    preset = PRESETS[name]
    stem = "ceiling" if history == int(preset[preset.index("--history") + 1]) else f"ceiling-history-{history}"
    path = next(p for p in (folder / f"{stem}.json", folder / f"{stem}.json.gz") if p.exists())
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    report = json.loads(raw)
    assert report["config"]["history"] == history, path
    return report["summary"]


def test_ceiling_history_table_matches_its_reports():
    text = _doc("studies.md")
    lines = text[text.index("**The same check with more history**"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| data, history"))
    arms = [cell.strip().strip("`") for cell in lines[start].strip("|").split("|")[1:]]
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]))
    assert len(rows) >= 6
    for line in rows:
        label, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = {"Beijing": "beijing", "NN5": "nn5"}[label.split(",")[0]]
        summary = _ceiling(name, int(re.search(r"(\d+) (?:h|days)", label).group(1)))
        for arm, cell in zip(arms, cells, strict=True):
            median, mean = _percents(cell)
            assert (median, mean) == (round(100 * summary[arm]["median_skill"], 1),
                                      round(100 * summary[arm]["mean_skill"], 1)), (label, arm)


def _report_rows(doc: str, marker: str) -> list[tuple[list[str], dict]]:
    """(cells, report) of each row of the "| report (" table after `marker` in docs/`doc`; the first
    cell names the committed report, `benchmarks/<name>` + .json or .json.gz."""
    text = _doc(doc)
    lines = text[text.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| report ("))
    rows = []
    for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        path = ROOT / "benchmarks" / (cells[0].split("`")[1] + ".json")
        raw = path.read_bytes() if path.exists() else gzip.decompress(path.with_suffix(".json.gz").read_bytes())
        rows.append((cells, json.loads(raw)))
    return rows


def _check_served_row(label, federated, served, shares, worst, chosen, report: dict) -> None:
    """A row's federated and served medians, served better / worse shares and worst site, and how
    many site-cutoffs the guard served the federated model, against its comparison report."""
    summary = {s["arm"]: s for s in report["summary"]}
    assert _percents(federated) == [round(100 * summary["federated"]["median_skill"], 1)], label
    assert _percents(served) == [round(100 * summary["served"]["median_skill"], 1)], label
    assert _percents(shares) == [round(100 * summary["served"]["share_better"]),
                                 round(100 * summary["served"]["share_worse"])], label
    assert _percents(worst) == [round(100 * summary["served"]["worst_skill"], 1)], label
    served_federated = sum(g["serve"] == "federated" for g in report["guard"])
    assert chosen == f"{served_federated} of {len(report['guard'])}", label


def test_more_history_table_matches_its_reports():
    rows = _report_rows("benchmarks.md", "## The product with more history")
    assert len(rows) == 3
    for (label, federated, served, shares, worst, chosen), report in rows:
        _check_served_row(label, federated, served, shares, worst, chosen, report)


def test_stat_anchor_table_matches_its_reports():
    rows = _report_rows("studies.md", "## A head that starts from the statistical forecast")
    assert len(rows) == 4
    for (label, simple, stat, served, worst, chosen), report in rows:
        by_site = report["summary_by_site"]
        for arm, cell in (("pretrained_on_simple", simple), ("pretrained_on_stat", stat), ("served_on_stat", served)):
            assert _percents(cell) == [round(100 * by_site[arm]["median_skill"], 1)], (label, arm)
        assert _percents(worst) == [round(100 * by_site["served_on_stat"]["worst_skill"], 1)], label
        rows_served = [r for r in report["per_site"] if r["arm"] == "served_on_stat"]
        assert chosen == f"{sum(r['serve'] == 'federated' for r in rows_served)} of {len(rows_served)}", label


def test_known_ahead_table_matches_its_reports():
    rows = _report_rows("studies.md", "**What a site could know of the horizon**")
    assert len(rows) == 4
    for (label, *cells, worst), report in rows:
        summary = report["summary"]
        arms = ("pooled_ridge_on_stat", "pooled_ridge_on_stat_known_ahead", "pooled_ridge_on_stat_known_ahead_if_better")
        for arm, cell in zip(arms, cells, strict=True):
            assert _percents(cell) == [round(100 * summary[arm]["median_skill"], 1),
                                       round(100 * summary[arm]["mean_skill"], 1)], (label, arm)
        assert _percents(worst) == [round(100 * summary[arms[-1]]["worst_skill"], 1)], label
        assert report["config"]["calendar"] == ("calendar" in label), label
        assert report["config"]["history"] == int(re.search(r": (\d+) (?:h|days)", label).group(1)), label


def test_known_ahead_mlp_table_matches_its_reports():
    rows = _report_rows("studies.md", "**The same inputs through a pooled MLP**")
    assert len(rows) == 2
    for (label, *cells, worst), report in rows:
        summary = report["summary"]
        arms = ("pooled_mlp_on_stat_known_ahead", "pooled_mlp_on_stat_known_ahead_if_better")
        for arm, cell in zip(arms, cells, strict=True):
            assert _percents(cell) == [round(100 * summary[arm]["median_skill"], 1),
                                       round(100 * summary[arm]["mean_skill"], 1)], (label, arm)
        assert _percents(worst) == [round(100 * summary[arms[-1]]["worst_skill"], 1)], label
        assert report["config"]["mlp"] and report["config"]["history"] == int(re.search(r": (\d+) h", label).group(1))


def test_known_ahead_product_table_matches_its_reports():
    rows = _report_rows("benchmarks.md", "## The product with a perfect weather forecast")
    assert len(rows) == 4
    for (label, hidden, federated, served, shares, worst, chosen), report in rows:
        assert report["config"]["histories"] == [int(re.search(r": (\d+) h", label).group(1))], label
        assert report["config"]["run_config"]["futr-exog"] == "TEMP,PRES,DEWP,RAIN,WSPM", label
        assert int(report["config"]["run_config"].get("known-hidden", 0)) == int(hidden), label
        _check_served_row(label, federated, served, shares, worst, chosen, report)


@pytest.mark.parametrize("doc, marker, name", [
    ("README.md", "## New sites (cold start)", "coldstart-nn5"),
    ("benchmarks.md", "## New sites: NN5, 111 ATMs", "coldstart-nn5"),
    ("benchmarks.md", "## New sites: Beijing PM2.5, 12 stations", "coldstart-beijing"),
])
def test_cold_start_tables_match_their_reports(doc, marker, name):
    """Each row: an arm, then per history length its median skill over alone_best (header: "N days")."""
    text = _doc(doc)
    summary = {(s["arm"], s["history"]): s for s in _report(name)["summary"]}
    lines = text[text.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| arm |"))
    points = {"coldstart-nn5": 1, "coldstart-beijing": 24}[name]
    histories = [int(cell.split()[0]) * points for cell in lines[start].strip("|").split("|")[1:]]
    rows = _table_after(text, marker)
    assert rows
    for label, *cells in rows:
        arm = label.split(" (")[0]
        for history, cell in zip(histories, cells, strict=True):
            if cell == "—":
                assert (arm, history) not in summary, (arm, history)
                continue
            assert _percents(cell)[0] == round(100 * summary[(arm, history)]["median_skill"], 1), (arm, history)


def test_pretraining_study_table_matches_its_report():
    results = {r["variant"]: r for r in json.loads((ROOT / "benchmarks" / "pretraining" / "beijing.json").read_text())["results"]}
    rows = _table_after(_doc("studies.md").replace("| variant |", "| arm |"), "## Pretraining: which corpus")
    assert {row[0] for row in rows} == set(results)
    for variant, _, _, epochs, seconds, val_mae, theta, simple in rows:
        r = results[variant]
        assert int(epochs) == r["epochs"] and int(seconds) == round(r["seconds"]), variant
        assert float(val_mae) == round(r["corpus_val_mae"], 3), variant
        assert _percents(theta)[0] == round(100 * r["skill_vs_theta"], 1), variant
        assert _percents(simple)[0] == round(100 * r["skill_vs_simple"], 1), variant


def test_robustness_study_table_matches_its_report():
    report = json.loads((ROOT / "benchmarks" / "robustness" / "beijing.json").read_text())
    runs = {(r["aggregation"], r["attack"]): r for r in report["runs"]}
    text = _doc("benchmarks.md").replace("| aggregation |", "| arm |")
    rows = _table_after(text, "## A hostile site: Beijing")
    assert {(row[0], row[1]) for row in rows} == set(runs)
    for aggregation, attack, federated, served, rejected, norm in rows:
        r = runs[aggregation, attack]
        assert _percents(federated)[0] == round(100 * r["federated"], 1), (aggregation, attack)
        assert _percents(served)[0] == round(100 * r["served"], 1), (aggregation, attack)
        assert int(rejected) == r["rejected"] and float(norm) == float(f"{r['largest_accepted_norm']:.3g}")
    assert f"is {report['max_update_norm']:g}:" in text
