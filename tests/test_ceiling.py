"""The pooled-model ceiling check: every arm for every site and cutoff, and ridges that fit what they should."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from shared.data import DataError, Windows, make_splits, regularize, validate
from shared.synthetic import demo_sites
from studies.ceiling import (ARMS, COVARIATE_ARMS, KNOWN_AHEAD_ARMS, MLP_ARMS, PooledMLP, Ridge, calendar,
                             covariate_inputs, main, read_covariates)


def windows(x: np.ndarray, y: np.ndarray) -> Windows:
    n = len(x)
    return Windows(x.astype(np.float32), y.astype(np.float32), np.ones(y.shape, bool), np.ones(n),
                   np.full(n, "s", object), np.zeros(n, "datetime64[ns]"))


def test_ceiling_scores_every_arm_at_every_site_and_cutoff(tmp_path):
    data = tmp_path / "sites.csv"
    demo_sites(n_sites=3, length=24 * 30, seed=1).to_csv(data, index=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--history", "264", "--cutoffs", "2",
            "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48", "--stride", "12",
            "--set", "lags=1 24"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    rows = report["per_site"]
    assert len(report["config"]["cutoffs"]) == 2
    assert {(r["site"], r["cutoff"], r["arm"]) for r in rows} == {
        (s, c, a) for s in ("site00", "site01", "site02") for c in report["config"]["cutoffs"]
        for a in ("stat_choice", *ARMS)}
    assert all(math.isfinite(r["mae"]) and r["mae"] >= 0 for r in rows)
    assert all(r["skill"] == 0 for r in rows if r["arm"] == "stat_choice")
    assert report["summary"]["pooled_ridge"]["n"] == 6


def test_ridges_recover_an_exact_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(10, 2, (400, 24))
    y = np.repeat(x[:, -1:], 6, axis=1)  # persistence: linear in the normalised window
    ridge = Ridge([windows(x, y)]).fit(1e-6)
    assert np.abs(ridge.predict(x[:50]) - y[:50]).max() < 1e-3
    # on the correction to persistence, even a huge penalty leaves persistence itself
    ridge = Ridge([windows(x, y)], anchor="naive").fit(1e6)
    assert np.abs(ridge.predict(x[:50]) - y[:50]).max() < 1e-6
    # a penalty that large on the plain ridge shrinks to the window mean instead
    plain = Ridge([windows(x, y)]).fit(1e6)
    assert np.abs(plain.predict(x[:50]) - x[:50].mean(1, keepdims=True)).max() < 0.05 * np.abs(y[:50]).max()


def test_a_ridge_on_given_forecasts_keeps_them_under_a_large_penalty_and_corrects_a_biased_one():
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, (400, 24))
    y = np.repeat(x[:, -1:], 6, axis=1)
    given = y + 0.5 * x.std(1, keepdims=True)  # persistence shifted by half a window std
    stiff = Ridge([windows(x, y)], "given", [given]).fit(1e9)
    assert np.abs(stiff.predict(x[:50], given[:50]) - given[:50]).max() < 1e-3
    loose = Ridge([windows(x, y)], "given", [given]).fit(1e-6)
    assert np.abs(loose.predict(x[:50], given[:50]) - y[:50]).max() < 1e-3


def _demo(tmp_path):
    data = tmp_path / "sites.csv"
    frame = demo_sites(n_sites=3, length=24 * 30, seed=2)
    frame.to_csv(data, index=False)
    return frame, data


ARGV = ["--history", "264", "--cutoffs", "1", "--lookback", "48", "--horizon", "12", "--val-size", "96",
        "--test-size", "48", "--stride", "12", "--set", "lags=1 24"]


def test_covariates_are_read_at_each_windows_last_input_time_and_reach_the_report(tmp_path):
    frame, data = _demo(tmp_path)
    frame["ds"] = pd.to_datetime(frame["ds"])
    covariates = tmp_path / "covariates.parquet"
    frame.assign(same=frame["y"], label="text").drop(columns="y").to_parquet(covariates)
    table = read_covariates(str(covariates))
    assert list(table.columns) == ["same"]  # the text column is left out
    sites = {}
    checked = validate(frame, "demo")
    for name, rows in checked.groupby("site"):
        rows = rows.reset_index(drop=True)
        rows.attrs = dict(checked.attrs)
        sites[name] = (make_splits(regularize(rows)[0], 48, 12, 96, 48, stride=12), None, None)
    extra = covariate_inputs(table, sites, pd.Timedelta(hours=1))
    last = {name: {k: getattr(s, k).x[:, -1] for k in ("train", "val", "test")} for name, (s, _, _) in sites.items()}
    pooled = np.concatenate([v["train"] for v in last.values()])
    for name in sites:  # the covariate equals y, so at the last input time it is the window's last value
        for k in ("train", "val", "test"):
            np.testing.assert_allclose(extra[name][k][:, 0], (last[name][k] - pooled.mean()) / pooled.std(), atol=1e-4)
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--covariates", str(covariates), *ARGV]) == 0
    report = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    assert set(report["summary"]) == {"stat_choice", *ARMS, *COVARIATE_ARMS}
    assert all(math.isfinite(r["mae"]) for r in report["per_site"])


def test_known_ahead_covariates_are_read_over_the_horizon_and_reach_the_report(tmp_path):
    frame, data = _demo(tmp_path)
    frame["ds"] = pd.to_datetime(frame["ds"])
    covariates = tmp_path / "covariates.parquet"
    frame.assign(same=frame["y"]).drop(columns="y").to_parquet(covariates)
    table = read_covariates(str(covariates))
    checked = validate(frame, "demo")
    rows = checked[checked["site"] == checked["site"].iloc[0]].reset_index(drop=True)
    rows.attrs = dict(checked.attrs)
    splits = make_splits(regularize(rows)[0], 48, 12, 96, 48, stride=12)
    ahead = covariate_inputs(table, {"a": (splits, None, None)}, pd.Timedelta(hours=1), range(-1, 12))["a"]
    y = splits.train.y  # offsets 0..11 are the horizon: the targets themselves, standardised per offset
    np.testing.assert_allclose(ahead["train"][:, 1:], (y - y.mean(0)) / y.std(0), atol=1e-4)
    np.testing.assert_allclose(ahead["train"][:, 0], (splits.train.x[:, -1] - splits.train.x[:, -1].mean())
                               / splits.train.x[:, -1].std(), atol=1e-4)
    out = tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--covariates", str(covariates), "--known-ahead", "same", *ARGV]) == 0
    report = json.loads((out / "ceiling.json").read_text())
    assert report["config"]["known_ahead"] == ["same"]
    told = [r["mae"] for r in report["per_site"] if r["arm"] == KNOWN_AHEAD_ARMS[0]]
    blind = [r["mae"] for r in report["per_site"] if r["arm"] == COVARIATE_ARMS[0]]
    assert len(told) == 3 and all(map(math.isfinite, told)) and told != blind  # the horizon's values are used


def test_known_ahead_needs_covariates_that_have_the_columns(tmp_path, capsys):
    frame, data = _demo(tmp_path)
    with pytest.raises(SystemExit, match="--known-ahead needs --covariates"):
        main(["--data", str(data), "--out", str(tmp_path / "a"), "--known-ahead", "t", *ARGV])
    covariates = tmp_path / "t.csv"
    frame[["unique_id", "ds"]].assign(t=1.0).to_csv(covariates, index=False)
    with pytest.raises(SystemExit, match="t.csv has no numeric column TEMP"):
        main(["--data", str(data), "--out", str(tmp_path / "b"), "--covariates", str(covariates),
              "--known-ahead", "t,TEMP", *ARGV])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_calendar_columns_name_the_day_and_hour(tmp_path):
    days = pd.DataFrame({"unique_id": "a", "ds": pd.to_datetime(["2024-02-27", "2024-03-01"]), "y": 1.0})
    days.attrs["freq"] = "D"
    table = calendar(days)
    assert len(table) == 4 and "hour_sin1" not in table  # 27 Feb to 1 Mar 2024 (a leap year), daily
    tue, fri = table.loc[("a", pd.Timestamp("2024-02-27"))], table.loc[("a", pd.Timestamp("2024-03-01"))]
    assert tue["weekday_1"] == 1 and tue[[f"weekday_{k}" for k in range(7)]].sum() == 1 and fri["weekday_4"] == 1
    assert tue["to_month_end"] == pytest.approx(2 / 30) and tue["month_last3"] == 1 and tue["month_first3"] == 0
    assert fri["month_first3"] == 1 and fri["month_sin1"] == pytest.approx(0) and fri["month_cos1"] == pytest.approx(1)
    hours = pd.DataFrame({"unique_id": "a", "ds": pd.to_datetime(["2024-01-01 00:00", "2024-01-01 06:00"]), "y": 1.0})
    hours.attrs["freq"] = "h"
    six = calendar(hours).loc[("a", pd.Timestamp("2024-01-01 06:00"))]
    assert six["hour_sin1"] == pytest.approx(1) and six["hour_cos1"] == pytest.approx(0, abs=1e-12)
    frame, data = _demo(tmp_path)
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--calendar", *ARGV]) == 0
    report = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    assert set(report["summary"]) == {"stat_choice", *ARMS, *COVARIATE_ARMS, *KNOWN_AHEAD_ARMS}
    assert "weekday_0" in report["config"]["known_ahead"] and report["config"]["calendar"]


def test_a_pooled_mlp_learns_a_nonlinear_effect_of_a_known_input_and_repeats_itself():
    rng = np.random.default_rng(3)
    x, u = rng.normal(10, 2, (2000, 24)), rng.normal(size=(2000, 1))
    scale = x.std(1, keepdims=True) + 1e-8
    y = x[:, -1:] + 3 * np.abs(u) * scale  # the forecast given (persistence) misses a shock |u| known ahead
    given = x[:, -1:]
    train, val, test = slice(0, 1500), slice(1500, 1800), slice(1800, None)

    def fit():
        return PooledMLP([windows(x[train], y[train])], [given[train]], [u[train]],
                         [windows(x[val], y[val])], [given[val]], [u[val]], seed=1)
    first, second = fit(), fit()
    pred = first.predict(x[test], given[test], u[test])
    np.testing.assert_array_equal(pred, second.predict(x[test], given[test], u[test]))
    ridge = Ridge([windows(x[train], y[train])], "given", [given[train]], [u[train]]).fit(1e-6)
    errors = {"mlp": np.abs(pred - y[test]).mean(), "ridge": np.abs(ridge.predict(x[test], given[test], u[test]) - y[test]).mean(),
              "given": np.abs(given[test] - y[test]).mean()}
    assert errors["mlp"] < 0.5 * errors["ridge"] < 0.5 * errors["given"]  # |u| is out of a ridge's reach


def test_the_mlp_arm_reaches_the_report_and_needs_inputs_known_ahead(tmp_path):
    frame, data = _demo(tmp_path)
    with pytest.raises(SystemExit, match="--mlp needs --known-ahead or --calendar"):
        main(["--data", str(data), "--out", str(tmp_path / "a"), "--mlp", *ARGV])
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--calendar", "--mlp", *ARGV]) == 0
    report = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    assert set(MLP_ARMS) <= set(report["summary"]) and report["config"]["mlp"]
    assert all(math.isfinite(r["mae"]) for r in report["per_site"] if r["arm"] in MLP_ARMS)


def test_a_ridge_uses_extra_inputs():
    rng = np.random.default_rng(2)
    x, u = rng.normal(10, 2, (400, 24)), rng.normal(size=(400, 1))
    y = x[:, -1:] + 3 * u * (x.std(1, keepdims=True) + 1e-8)  # persistence plus a known shock
    ridge = Ridge([windows(x, y)], anchor="naive", extra=[u]).fit(1e-6)
    assert np.abs(ridge.predict(x[:50], extra=u[:50]) - y[:50]).max() < 1e-3
    assert np.abs(Ridge([windows(x, y)], anchor="naive").fit(1e-6).predict(x[:50]) - y[:50]).max() > 1


def test_covariates_that_miss_a_series_or_have_no_numbers_are_refused(tmp_path):
    frame, data = _demo(tmp_path)
    few = tmp_path / "few.csv"
    frame[frame["unique_id"] != frame["unique_id"].iloc[-1]].assign(t=1.0).drop(columns="y").to_csv(few, index=False)
    with pytest.raises(DataError, match=f"no rows for series {frame['unique_id'].iloc[-1]}"):
        main(["--data", str(data), "--out", str(tmp_path / "a"), "--covariates", str(few), *ARGV])
    words = tmp_path / "words.csv"
    frame[["unique_id", "ds"]].assign(t="x").to_csv(words, index=False)
    with pytest.raises(DataError, match="words.csv: no numeric column"):
        main(["--data", str(data), "--out", str(tmp_path / "b"), "--covariates", str(words), *ARGV])
