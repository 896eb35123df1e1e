"""The evaluation record's codec and the per-site table built from the server's rows."""

from __future__ import annotations

import math

import pytest

from shared.guard import GuardDecision
from shared.metrics import METRICS
from shared.results import ArmScores, SiteEvaluation, format_summary, site_table, skill


def _scores(val: float, test: float) -> ArmScores:
    return ArmScores(val, {m: test if m == "mae" else test + 1 for m in METRICS})


def _evaluation(federated_test: float = 8.0, alone_test: float = 5.0, serve: str = "alone_best") -> SiteEvaluation:
    alone = _scores(7.0, alone_test)
    federated = _scores(6.0, federated_test)
    arms = {"naive": _scores(9.0, 3.0), "seasonal_naive_24": _scores(8.0, 6.0), "auto_ets": alone,
            "local_only": _scores(7.5, 4.0), "alone_best": alone, "federated": federated,
            "served": federated if serve == "federated" else alone}
    guard = GuardDecision(serve, 6.0, 7.0, 0.75, 4, 0.3125, 0.02)
    return SiteEvaluation(arms, guard, "auto_ets", filled_points=3, test_windows=12)


def test_reply_round_trips_through_the_codec():
    ev = _evaluation()
    metrics, text = ev.to_reply()
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert text == {"alone-choice": "auto_ets", "serve": "alone_best"}
    assert metrics["federated:test-mae"] == 8.0 and metrics["guard:sign-p"] == 0.3125
    assert SiteEvaluation.from_row({**metrics, **text}) == ev


def test_a_row_without_figures_or_with_an_error_is_no_evaluation():
    assert SiteEvaluation.from_row({"num-examples": 1}) is None  # reports = minimal
    metrics, text = _evaluation().to_reply()
    assert SiteEvaluation.from_row({**metrics, **text, "error": "rejected"}) is None


def test_site_table_uses_the_latest_evaluation_and_validation_choices():
    metrics, text = _evaluation().to_reply()
    row = {"round": 2, "phase": "evaluate", "site": "s", **metrics, **text}
    earlier = {**row, "round": 1, "federated:test-mae": 99.0}
    (table_row,) = site_table([earlier, row, {"round": 2, "phase": "train", "site": "s", "num-examples": 5}])
    assert table_row["round"] == 2 and table_row["federated_mae"] == 8.0
    assert table_row["simple"] == "seasonal_naive_24" and table_row["simple_mae"] == 6.0  # best on validation
    assert table_row["alone"] == "auto_ets" and table_row["local_only_mae"] == 4.0
    assert table_row["skill_vs_alone"] == pytest.approx(1 - 8.0 / 5.0) and table_row["served_skill_vs_alone"] == 0.0


def test_skill_is_undefined_where_alone_has_no_error():
    """A constant series forecast exactly: the table and the summary say so instead of dividing by zero."""
    assert skill(1.0, 4.0) == 0.75 and math.isnan(skill(1.0, 0.0)) and math.isnan(skill(0.0, 0.0))
    rows = []
    for site, alone_test in (("a", 0.0), ("b", 5.0)):
        metrics, text = _evaluation(alone_test=alone_test).to_reply()
        rows.append({"round": 1, "phase": "evaluate", "site": site, **metrics, **text})
    table = site_table(rows)
    assert math.isnan(table[0]["skill_vs_alone"]) and table[1]["skill_vs_alone"] == pytest.approx(-0.6)
    text = format_summary({"sites": table})
    assert "n/a" in text and "federated -60.0% (1 site without: alone's test MAE is 0)" in text
