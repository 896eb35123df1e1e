"""The stat-anchored head check: every arm at every site and cutoff, a head that can start on the given forecast."""

import json
import math

import numpy as np
import torch

from shared.model import ModelArgs
from shared.train import anchor_head
from studies.anchored import ARMS, StatAnchored, main, with_given
from tests.test_ceiling import windows
from shared.synthetic import demo_sites
from tests.conftest import TINY

ARGS = ModelArgs(lookback=48, horizon=12, lags=(1, 24), patch_len=12, patch_stride=12, d_model=16, n_heads=2,
                 n_layers=1, d_ff=32)


def test_a_head_started_on_the_given_forecast_returns_it():
    rng = np.random.default_rng(0)
    x, given = rng.normal(50, 5, (30, 48)), rng.normal(50, 5, (30, 12))
    w = windows(x, given)  # targets equal the given forecast: it has the lowest training MAE
    torch.manual_seed(0)
    model = StatAnchored(ARGS)
    assert anchor_head(model, w, given=given) == "given"
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(with_given(w, given).x)).numpy()
        shared = model(torch.from_numpy(with_given(w, given).x), head=False).numpy()
    # weight 0.9 on the given forecast, 0.1 on the shared one; the correction starts at zero
    expected = 0.9 * given + 0.1 * shared
    np.testing.assert_allclose(out, expected, rtol=1e-4)


def test_anchored_check_scores_every_arm_at_every_site_and_cutoff(tmp_path):
    data = tmp_path / "sites.csv"
    demo_sites(n_sites=3, length=24 * 30, seed=1).to_csv(data, index=False)
    keys = ("lags", "patch-len", "patch-stride", "d-model", "n-heads", "n-layers", "d-ff", "corpus-series",
            "corpus-length", "pretrain-epochs", "max-epochs", "steps-per-epoch", "batch-size")
    sets = [a for k in keys for a in ("--set", f"{k}={TINY[k]}")] + ["--set", f"cache-dir={tmp_path / 'cache'}"]
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--history", "264", "--cutoffs", "2",
            "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48", "--stride", "12", *sets]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "anchored.json").read_text())
    rows = report["per_site"]
    assert {(r["site"], r["cutoff"], r["arm"]) for r in rows} == {
        (s, c, a) for s in ("site00", "site01", "site02") for c in report["config"]["cutoffs"]
        for a in ("stat_choice", *ARMS)}
    assert all(math.isfinite(r["mae"]) and r["mae"] >= 0 for r in rows)
    by = {(r["site"], r["cutoff"], r["arm"]): r for r in rows}
    for (site, cutoff, arm), r in by.items():
        if arm == "served_on_stat":  # the guard's choice: the anchored model's or stat_choice's test MAE
            source = "pretrained_on_stat" if r["serve"] == "federated" else "stat_choice"
            assert r["mae"] == by[(site, cutoff, source)]["mae"]
    assert report["summary"]["pretrained_on_stat"]["n"] == 6
    assert report["summary_by_site"]["served_on_stat"]["n"] == 3
