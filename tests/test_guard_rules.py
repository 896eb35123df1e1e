"""studies.guard_rules: the serving rules' figures, by hand on a two-site report."""

import json

import pytest

from studies.guard_rules import main, rule_summary


def _report() -> dict:
    guard = [  # site a: the guard served federated; b: federated 5 % better on judging windows, not served
        {"site": "a", "cutoff": "c0", "serve": "federated", "val_mae_federated": 8.0, "val_mae_alone": 10.0, "margin": 0.02},
        {"site": "b", "cutoff": "c0", "serve": "alone_best", "val_mae_federated": 9.5, "val_mae_alone": 10.0, "margin": 0.02},
        {"site": "b", "cutoff": "c1", "serve": "alone_best", "val_mae_federated": 9.9, "val_mae_alone": 10.0, "margin": 0.02},
    ]
    test = {("a", "c0"): (9.0, 10.0), ("b", "c0"): (8.0, 10.0), ("b", "c1"): (12.0, 10.0)}  # (federated, alone)
    per_cutoff = [{"site": s, "cutoff": c, "arm": arm, "mae": m} for (s, c), maes in test.items()
                  for arm, m in zip(("federated", "alone_best"), maes)]
    return {"guard": guard, "per_cutoff": per_cutoff}


def test_each_rule_serves_where_it_says_and_scores_sites_over_their_cutoffs(tmp_path, capsys):
    report = _report()
    guard, margin, always = (rule_summary(report, rule) for rule in ("guard", "margin", "always"))
    assert (guard["served_federated"], margin["served_federated"], always["served_federated"]) == (1, 2, 3)
    assert guard["median_skill"] == pytest.approx((0.1 + 0.0) / 2)  # a +10 %, b alone
    assert margin["median_skill"] == pytest.approx((0.1 + 0.1) / 2)  # b: +20 % at c0, alone at c1
    assert always["worst_skill"] == pytest.approx(0.0) and always["worse_than_2pct"] == 0  # b: (+20 - 20) / 2
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main([str(path)]) == 0
    assert "margin  federated at   2 of 3  median +10.0%" in capsys.readouterr().out
