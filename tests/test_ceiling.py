"""The pooled-model ceiling check: every arm for every site and cutoff, and ridges that fit what they should."""

import json
import math

import numpy as np
import pytest

from shared.data import Windows
from shared.synthetic import demo_sites
from simulations.ceiling import ARMS, Ridge, main


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
