"""The comparison end to end on tiny generated data: every arm, every site, valid numbers."""

import json
import math
import re
from dataclasses import replace

import pytest
import torch

from client.site import Site
from shared.guard import divide
from shared.train import round_seed
from shared.guard import SIGN_TEST_P, sign_test_p
from shared.model import Forecaster
from shared.sites import read_sites, sites_splits
from shared.synthetic import demo_sites
from simulations.compare import _tune_and_score, _with_attrs, federated_rows, fresh_head, in_process_arms, main
from simulations import attack, reference
from simulations.runner import RunError
from tests.conftest import TINY

pytestmark = pytest.mark.flower

ARMS = {"naive", "seasonal_naive_24", "auto_ets", "auto_theta", "local_only", "alone_best",
        "pretrained_zero_shot", "pretrained_only", "fedavg_global", "federated", "federated_scratch",
        "pooled_oracle", "served", "federated_dp_eps4", "served_dp_eps4"} | (
    {"reference_pretrained"} if reference.available() else set())  # the outside model, where installed
MODEL_KEYS = ("lags", "patch-len", "patch-stride", "d-model", "n-heads", "n-layers", "d-ff", "corpus-series",
              "corpus-length", "pretrain-epochs", "max-epochs", "steps-per-epoch", "batch-size")


def test_compare_reports_every_arm_for_every_site(tmp_path, capsys):
    data = tmp_path / "sites.csv"
    demo_sites(n_sites=3, length=24 * 30, seed=1).to_csv(data, index=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "report"), "--history", "264", "--cutoffs", "2",
            "--rounds", "2", "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48",
            "--stride", "12", "--dp-epsilons", "4", "--set", f"cache-dir={tmp_path / 'cache'}"]
    for key in MODEL_KEYS:
        argv += ["--set", f"{key}={TINY[key]}"]
    assert main(argv) == 0

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(report["cutoffs"]) == 2
    per_site = report["per_site"]
    assert {r["arm"] for r in per_site} == ARMS
    assert {r["site"] for r in per_site} == {"site00", "site01", "site02"}
    assert len(per_site) == len(ARMS) * 3 and all(r["cutoffs"] == 2 for r in per_site)
    for row in per_site:
        for key in ("mae", "rmse", "mase", "smape", "skill_vs_alone", "gain_vs_local"):
            assert row[key] is not None and math.isfinite(row[key]), (row["arm"], key)
        assert row["mae"] > 0
    alone = [r for r in per_site if r["arm"] == "alone_best"]
    assert all(abs(r["skill_vs_alone"]) < 1e-12 for r in alone)
    # served is federated or alone_best for each site and cutoff, as the guard decided
    by_key = {(r["site"], r["cutoff"], r["arm"]): r["mae"] for r in report["per_cutoff"]}
    for g in report["guard"]:
        chosen = "federated" if g["serve"] == "federated" else "alone_best"
        assert by_key[(g["site"], g["cutoff"], "served")] == by_key[(g["site"], g["cutoff"], chosen)]
    assert len(report["guard"]) == 3 * 2
    # each decision is the one its reported figures imply (margin and sign test)
    for g in report["guard"]:
        assert g["windows"] >= 1 and g["sign_p"] == sign_test_p(round(g["val_win_share"] * g["windows"]), g["windows"])
        passes = g["val_mae_federated"] <= (1 - g["margin"]) * g["val_mae_alone"] and g["sign_p"] <= SIGN_TEST_P
        assert g["serve"] == ("federated" if passes else "alone_best"), g
    # the DP arm spent its ε (noise calibrated for the rounds) and serves federated_dp or alone_best
    for work in (tmp_path / "report" / "work").iterdir():
        privacy = json.loads((work / "federated_dp_eps4" / "summary.json").read_text())["privacy"]
        assert privacy["dp"] == "central" and privacy["stopped_before_round"] is None
        assert 3.9 < privacy["epsilon"] <= 4.0 and sorted(privacy["epsilon_by_round"]) == ["1", "2"]
    for (site, cutoff, arm), mae in by_key.items():
        if arm == "served_dp_eps4":
            assert mae in (by_key[site, cutoff, "federated_dp_eps4"], by_key[site, cutoff, "alone_best"])
    assert {r["round"] for r in report["rounds"]} == {1, 2}
    assert {s["arm"] for s in report["summary"]} == ARMS
    for name in ("per_site.csv", "report.md", "skill_by_site.png", "skill_distribution.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0

    # a second run with --resume reuses every finished cutoff (no simulation runs) and reports the same
    assert main(argv + ["--resume"]) == 0
    again = json.loads((tmp_path / "report" / "report.json").read_text())
    assert again["per_site"] == per_site and again["config"]["complete"]
    assert "reusing" in capsys.readouterr().out


def test_in_process_arms_do_not_depend_on_how_many_workers_run_them(tiny_settings, tmp_path):
    frame = read_sites(tiny_settings.data)
    full = sites_splits(frame, tiny_settings.data, tiny_settings.model)
    torch.manual_seed(0)
    pretrained = Forecaster(tiny_settings.model)
    one = in_process_arms(tiny_settings, full, pretrained, workers=1)
    two = in_process_arms(tiny_settings, full, pretrained, workers=2)
    assert one == two and set(one["pooled_oracle"]) == set(full)
    # and a worker scores what this process would for the same site, with the windows the site itself has
    args, train, name = tiny_settings.model, tiny_settings.train, sorted(full)[1]
    site = Site.open(name, frame[frame["site"] == name].reset_index(drop=True).pipe(_with_attrs, frame.attrs),
                     tmp_path / name, tiny_settings.data, tiny_settings.site)
    fit = divide(site.splits(args))[0]
    here = _tune_and_score(fresh_head(pretrained, fit.train).state_dict(), args, fit, site.splits(args),
                           replace(train, seed=round_seed(train.seed, site.name, -1)))
    assert one["pretrained_only"][site.name] == here


def test_compare_refuses_an_unknown_run_config_key_before_any_arm_runs(tmp_path):
    with pytest.raises(SystemExit, match="error: unknown run-config keys guard-margn, lookbak"):
        main(["--out", str(tmp_path / "out"), "--set", "lookbak=24", "--set", "guard-margn=0.1"])
    assert not (tmp_path / "out").exists()


def test_a_run_that_ended_without_results_is_an_error_naming_its_log(tmp_path):
    with pytest.raises(RunError, match=r"ended without per-site results; see .*flower/flwr-run.log"):
        federated_rows(tmp_path / "federated")


def test_an_attacking_site_is_caught_by_the_update_bound_and_the_others_are_aggregated(tmp_path):
    """--attack times-100: the first site sends 100 times its update; with max-update-norm the server
    rejects that reply (recorded with its reason in the report's rounds), and every site still evaluates."""
    data = tmp_path / "sites.csv"
    demo_sites(n_sites=3, length=24 * 30, seed=1).to_csv(data, index=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "report"), "--history", "264", "--cutoffs", "1",
            "--rounds", "1", "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48",
            "--stride", "12", "--arms", "federated", "--attack", "times-100", "--set", f"cache-dir={tmp_path / 'cache'}",
            "--set", "local-epochs=1", "--set", "max-update-norm=10", "--set", "min-train-nodes=2"]
    for key in MODEL_KEYS:
        argv += ["--set", f"{key}={TINY[key]}"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    errors = {r["site"]: r.get("error") for r in report["rounds"]}
    assert set(errors) == {"site00", "site01", "site02"}
    assert re.fullmatch(r"rejected: update norm [\d.]+ above max-update-norm 10", errors["site00"]), errors
    assert errors["site01"] is None and errors["site02"] is None
    assert {r["site"] for r in report["per_site"] if r["arm"] == "federated"} == {"site00", "site01", "site02"}


def test_an_attack_other_than_times_k_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"--attack 'plus-100': expected times-K with K > 1"):
        main(["--out", str(tmp_path / "out"), "--arms", "federated", "--attack", "plus-100"])
    assert attack.scaled(torch.zeros(3), torch.ones(3), 100.0).tolist() == [100.0, 100.0, 100.0]


def test_the_cold_start_comparison_runs_the_apps_rounds_and_reports_every_new_site(tmp_path):
    """--new-sites through Flower: the established sites' rounds only train (final-evaluate false) and every
    site is new once, at each history length."""
    data = tmp_path / "sites.csv"
    demo_sites(n_sites=4, length=24 * 30, seed=1).to_csv(data, index=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "report"), "--history", "264", "--cutoffs", "1",
            "--rounds", "1", "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48",
            "--stride", "12", "--new-sites", "0.5", "--new-history", "48,96", "--set", "local-epochs=1",
            "--set", f"cache-dir={tmp_path / 'cache'}", "--set", "stat-models="]
    for key in MODEL_KEYS:
        argv += ["--set", f"{key}={TINY[key]}"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["config"]["complete"] and len(report["cutoffs"]) == 2
    assert sorted(s for c in report["cutoffs"] for s in c["new_sites"]) == ["site00", "site01", "site02", "site03"]
    served = {(r["site"], r["history"]) for r in report["per_cutoff"] if r["arm"] == "served"}
    assert served == {(f"site0{i}", h) for i in range(4) for h in (48, 96)}
    for work in (tmp_path / "report" / "work").iterdir():  # the rounds trained and nobody evaluated
        rows = json.loads((work / "federated" / "federated" / "per_site.json").read_text())
        assert {r["phase"] for r in rows} == {"train"} and not any("error" in r for r in rows)
