"""Sites with little history: the new-site guard's rule, the fold rotation (a new site's series never reach
the established sites' rounds), the join command (a site with only a lookback of history is served), and what
established sites report for the prior."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from client.join import main as join
from shared.config import Settings
from shared.data import regularize
from shared.guard import MAX_LOSS_SHARE, PRIOR_WEIGHT, Prior, decide_new
from shared.model import Forecaster
from shared.newsite import ShortHistoryEvidence, own_val_size, pick_alone, short_history_evidence
from shared.results import ArmScores, SiteEvaluation, new_site_prior
from shared.guard import GuardDecision
from simulations import coldstart

CONFIG = {"lookback": 14, "horizon": 7, "lags": "1 7", "patch-len": 7, "patch-stride": 7, "d-model": 16,
          "n-heads": 2, "n-layers": 1, "d-ff": 32, "max-epochs": 2, "steps-per-epoch": 3, "batch-size": 16,
          "val-size": 14, "test-size": 14, "stride": 7, "init": "random", "stat-models": "auto_ets",
          "site-column": "site"}
MARKER = 1e6  # a value no honest series holds


def _frame(sites: int = 8, days: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    t = np.arange(days)
    rows = []
    for i in range(sites):
        y = 50 + 10 * np.sin(2 * np.pi * t / 7 + i) + rng.normal(0, 1, days)
        if i == 0:
            y = y * 0 + MARKER  # the marker site
        rows.append(pd.DataFrame({"unique_id": f"s{i}", "site": f"s{i}", "ds": pd.date_range("2020-01-01", periods=days),
                                  "y": y}))
    frame = pd.concat(rows, ignore_index=True)
    frame.attrs["freq"] = "D"
    return frame


@pytest.mark.parametrize("prior, own, serve", [
    (Prior(9, 0, 10), ([], []), "shared"),  # no own windows: the established sites decide
    (Prior(1, 0, 10), ([], []), "alone_best"),
    (Prior(9, 0, 10), ([2.0] * 20, [1.0] * 20), "alone_best"),  # 20 own windows all lost outweigh a strong prior
    (Prior(1, 0, 10), ([1.0] * 20, [2.0] * 20), "shared"),  # and 20 won a weak one
    (Prior(8, 2, 10), ([], []), "alone_best"),  # won often, but lost by >5 % too often
    (Prior(8, 2, 10), ([1.0] * 20, [2.0] * 20), "alone_best"),  # own wins do not lift the loss bound
    (Prior(7, 0, 7), ([], []), "alone_best"),  # too few established sites to bound the risk
    (Prior(), ([1.0] * 20, [2.0] * 20), "alone_best"),  # no established evidence at all: alone
])
def test_the_new_site_guard_follows_its_stated_rule(prior, own, serve):
    decision = decide_new(56, prior, *own)
    assert decision.serve == serve
    expected = (PRIOR_WEIGHT * (prior.won + 1) / (prior.sites + 2) + decision.own_wins) / (
        PRIOR_WEIGHT + decision.own_windows)
    assert decision.score == pytest.approx(expected)
    assert decision.loss_share == pytest.approx((prior.lost + 1) / (prior.sites + 2))
    assert (decision.score >= decision.threshold and decision.loss_share <= MAX_LOSS_SHARE) == (serve == "shared")
    assert (decision.prior_won, decision.prior_lost, decision.prior_sites) == (prior.won, prior.lost, prior.sites)


def test_a_prior_holds_no_more_won_and_lost_reports_than_sites():
    with pytest.raises(ValueError, match="at most the sites"):
        Prior(6, 5, 10)
    with pytest.raises(ValueError, match="non-negative"):
        Prior(-1, 0, 10)
    assert Prior(1, 0, 1) + Prior(0, 1, 1) + Prior() == Prior(1, 1, 2)


def test_an_established_site_reports_its_validation_windows_only_won_or_lost():
    frame, _ = regularize(_frame(sites=2, days=120).query("site == 's1'").reset_index(drop=True))
    settings = Settings.from_config(CONFIG)
    torch.manual_seed(0)
    model = Forecaster(settings.model).eval()
    evidence = short_history_evidence(frame, model, 14, 14, 7, 7, ())
    assert len(evidence.shared_mae) == len(evidence.alone_mae) == 2  # two weekly origins in the last 14 days
    ratio = evidence.shared_mae.mean() / evidence.alone_mae.mean()
    assert evidence.report(0.02) == Prior(int(ratio <= 0.98), int(ratio > 1.05), 1)
    worse = ShortHistoryEvidence(14, "naive", np.array([1.2, 1.0]), np.array([1.0, 1.0]))
    assert worse.report(0.02) == Prior(0, 1, 1) and not worse.lost(0.2)


def test_a_new_site_keeps_validation_only_beyond_a_lookback():
    assert own_val_size(28, 28, 14, 7, 42) == 0  # only a lookback: no validation window
    assert own_val_size(56, 28, 14, 7, 42) == 28  # 3 weekly origins, a lookback before them
    assert own_val_size(112, 28, 14, 7, 42) == 42


def test_the_alone_choice_is_made_on_the_last_horizon_of_the_history():
    days = 42
    t = np.arange(days)
    weekly = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2020-01-01", periods=days),
                           "y": 10 + 5 * (t % 7 == 0)})
    assert pick_alone(weekly, 7, (1, 7), 7, ()) == "seasonal_naive_7"
    flat_then_step = weekly.assign(y=np.r_[np.zeros(days - 8), np.full(8, 3.0)])
    assert pick_alone(flat_then_step, 7, (1, 7), 7, ()) == "naive"


def test_the_prior_sums_each_sites_latest_report():
    def row(site, server_round, short):
        ev = SiteEvaluation({"alone_best": ArmScores(1.0, {m: 1.0 for m in ("mae", "rmse", "mase", "smape")})},
                            GuardDecision("alone_best", 1, 1, 0, 4, 1, 0.02), "naive", short_history=short)
        metrics, text = ev.to_reply()
        assert SiteEvaluation.from_row({**metrics, **text}).short_history == short  # the codec round-trips
        return {"site": site, "phase": "evaluate", "round": server_round, **metrics, **text}

    rows = [row("a", 1, {28: Prior(0, 1, 1)}), row("a", 2, {28: Prior(1, 0, 1), 56: Prior(0, 1, 1)}),
            row("b", 2, {28: Prior(1, 0, 1), 56: Prior(0, 0, 1)})]
    assert new_site_prior(rows) == {28: Prior(2, 0, 2), 56: Prior(0, 1, 2)}


def _fake_federation(seen: list, histories: list[int]):
    """Stands in for the App's rounds: records which sites it was given, publishes a random encoder and a prior."""
    def federated(run_config, established, cutoff, work):
        seen.append((cutoff, sorted(established["site"].unique()), float(established["y"].max())))
        out = work / "federated"
        out.mkdir(parents=True)
        torch.manual_seed(0)
        model = Forecaster(Settings.from_config(run_config).model)
        torch.save({"model_args": model.args.to_dict(), "encoder": model.encoder.state_dict(), "round": 1},
                   out / "global_encoder.pt")

    return federated


def test_every_site_is_new_once_per_cutoff_and_its_series_never_reach_the_established_rounds(tmp_path):
    frame = _frame()
    cutoffs = [pd.Timestamp("2020-04-16"), pd.Timestamp("2020-04-02")]
    seen, histories = [], [14, 28]
    summary = coldstart.run(CONFIG, frame, cutoffs, 70, histories, 4, ["federated"], tmp_path,
                            _fake_federation(seen, histories), lambda message: None, {"command": "test", "data": "x",
                                                                                     "rounds": 1})
    report = json.loads((tmp_path / "report.json").read_text())
    for cutoff in cutoffs:
        folds = [c["new_sites"] for c in report["cutoffs"] if c["cutoff"] == str(cutoff)]
        assert sorted(s for fold in folds for s in fold) == sorted(frame["site"].unique())  # each new exactly once
    for (cutoff, established, top), fold in zip(seen, report["cutoffs"]):
        assert not set(established) & set(fold["new_sites"])
        assert (top == MARKER) == ("s0" in established)  # the marker only where s0 is established
    new_rows = [r for r in report["per_cutoff"] if r["role"] == "new"]
    assert {r["history"] for r in new_rows} == set(histories)
    assert {"served", "federated_shared", "alone_best", "pooled_oracle", "pretrained_zero_shot"} <= {r["arm"] for r in new_rows}
    for guard in report["guard"]:  # a site with only a lookback has no own windows: the prior decides
        assert guard["prior_sites"] == 6  # the fold's established sites
        if guard["history"] == 14:
            assert guard["own_windows"] == 0
            assert guard["score"] == pytest.approx((guard["prior_won"] + 1) / (guard["prior_sites"] + 2))
            assert guard["loss_share"] == pytest.approx((guard["prior_lost"] + 1) / (guard["prior_sites"] + 2))
    assert {s["arm"] for s in summary} >= {"served", "federated_shared"}
    text = (tmp_path / "report.md").read_text()
    assert (tmp_path / "skill_vs_history.png").stat().st_size > 0 and "| served |" in text
    reports = sum(row["prior"]["14"]["sites"] for row in report["prior"])
    assert reports == 6 * len(report["prior"]) and f"| 14 | {reports} |" in text  # summed over folds and cutoffs


def test_a_site_with_only_a_lookback_of_history_joins_and_is_served(tmp_path):
    settings = Settings.from_config(CONFIG)
    torch.manual_seed(0)
    model = Forecaster(settings.model)
    encoder = tmp_path / "global_encoder.pt"
    torch.save({"model_args": model.args.to_dict(), "encoder": model.encoder.state_dict(), "round": 3}, encoder)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"new_site_prior": {"14": {"won": 9, "lost": 0, "sites": 10}}}))
    site = _frame(sites=2, days=14).query("site == 's1'")
    data = tmp_path / "site.csv"
    site.to_csv(data, index=False)
    out, report = tmp_path / "forecast.csv", tmp_path / "join.json"
    assert join(["--encoder", str(encoder), "--data", str(data), "--out", str(out), "--prior", str(summary),
                 "--report", str(report), "--stat-models", ""]) == 0
    forecast = pd.read_csv(out)
    assert len(forecast) == 7 and np.isfinite(forecast["y_hat"]).all()
    decision = json.loads(report.read_text())
    assert decision["serve"] == "shared" and decision["own_windows"] == 0 and decision["prior_sites"] == 10
    with torch.no_grad():  # what it served is the shared forecast of its last lookback
        x = torch.tensor(site["y"].to_numpy()[-14:], dtype=torch.float32)[None]
        np.testing.assert_allclose(forecast["y_hat"].to_numpy(), model.eval()(x, head=False)[0].numpy(), rtol=1e-4)
    short = tmp_path / "short.csv"
    site.iloc[:10].to_csv(short, index=False)
    assert join(["--encoder", str(encoder), "--data", str(short), "--out", str(out)]) == 1
