"""The pooled-model ceiling check: every arm for every site and cutoff, and ridges that fit what they should."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from shared.data import DataError, Windows, make_splits, regularize, validate
from shared.synthetic import demo_sites
from simulations.ceiling import ARMS, COVARIATE_ARMS, Ridge, covariate_inputs, main, read_covariates


def windows(x: np.ndarray, y: np.ndarray) -> Windows:
    n = len(x)
    return Windows(x.astype(np.float32), y.astype(np.float32), np.ones(y.shape, bool), np.ones(n),
                   np.full(n, "s", object), np.zeros(n, "datetime64[ns]"))


def test_ceiling_scores_every_arm_at_every_site_and_cutoff(tmp_path):
    data = tmp_path / "sites.csv"
    demo_sites(n_sites=3, length=24 * 30, seed=1).to_csv(data, index=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--history", "264", "--cutoffs", "2",
            "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48", "--stride", "12"]
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
        "--test-size", "48", "--stride", "12"]


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
