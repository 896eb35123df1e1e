"""Known-ahead covariates (futr-exog): read, windowed at the right offsets, learned by the shared
encoder, never carrying a site's statistics, and needed over the horizon to forecast."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from client.forecast import main as forecast_main
from client.site import Site
from shared.checkpoint import save_model, write_json
from shared.config import DataArgs, Settings, SiteArgs
from shared.data import DataError, make_splits, read_long, regularize, validate
from shared.model import Forecaster
from shared.pretrain import with_covariates
from shared.train import anchor_head, evaluate, fine_tune, predict
from tests.conftest import TINY

ARGS = Settings.from_config(TINY | {"futr-exog": "u"}).model  # lookback 48, horizon 12


def driven(n_series: int = 2, length: int = 600, seed: int = 0, effect=lambda u: 4 * u) -> pd.DataFrame:
    """Hourly series whose level moves by effect(u) of a known covariate u (random, so no past value
    predicts it)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n_series):
        u = rng.normal(size=length)
        y = 20 + 3 * np.sin(np.arange(length) * 2 * np.pi / 24) + effect(u) + rng.normal(scale=0.2, size=length)
        frames.append(pd.DataFrame({"site": "s0", "unique_id": f"s{i}",
                                    "ds": pd.date_range("2024-01-01", periods=length, freq="h"), "y": y, "u": u}))
    return pd.concat(frames, ignore_index=True)


def test_windows_hold_covariates_at_the_last_input_point_and_over_the_horizon():
    frame = driven(1).assign(u=lambda d: d["y"])  # a covariate equal to y shows its offsets
    regular, _ = regularize(validate(frame, "test", covariates=("u",)))
    splits = make_splits(regular, 48, 12, 96, 48, stride=12, covariates=("u",))
    for w in (splits.train, splits.val, splits.test):
        assert w.exog.shape == (len(w), 13, 1)
        np.testing.assert_allclose(w.exog[:, 0, 0], w.x[:, -1])
        np.testing.assert_allclose(w.exog[:, 1:, 0], w.y)


def test_covariate_gaps_are_filled_like_y_and_bad_columns_are_named(tmp_path):
    frame = driven(1, 100)
    frame.loc[10, "u"] = np.nan
    regular, _ = regularize(validate(frame, "test", covariates=("u",)))
    assert regular.loc[10, "u"] == pytest.approx((frame.loc[9, "u"] + frame.loc[11, "u"]) / 2)
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"series.csv lacks column\(s\) \['wind'\]"):
        read_long(path, covariates=("wind",))
    frame["u"] = frame["u"].astype(object)
    frame.loc[3, "u"] = "windy"
    with pytest.raises(DataError, match=r"column 'u' in test has values that are not finite numbers: 'windy' \(series s0\)"):
        validate(frame, "test", covariates=("u",))
    with pytest.raises(DataError, match="series s0 in test has no observed value of 'u'"):
        validate(driven(1, 100).assign(u=np.nan), "test", covariates=("u",))


def test_the_shared_correction_learns_what_the_covariate_does():
    regular, _ = regularize(validate(driven(), "test", covariates=("u",)))
    splits = make_splits(regular, 48, 12, 96, 48, stride=12, covariates=("u",))
    train = replace(Settings.from_config(TINY).train, max_epochs=30, steps_per_epoch=20)
    maes = {}
    for args in (ARGS, replace(ARGS, futr_exog=())):
        torch.manual_seed(0)
        model = Forecaster(args)
        anchor_head(model, splits.train)
        fine_tune(model, splits, train)
        maes[args.futr_exog] = evaluate(model, splits.test)["mae"]
    assert maes[("u",)] < 0.5 * maes[()], maes  # y moves by 4u: only the covariate can say where
    assert model.head.state_dict().keys() == {"mix", "correction.weight", "correction.bias"}


def test_known_hidden_learns_an_effect_the_linear_correction_cannot():
    regular, _ = regularize(validate(driven(effect=lambda u: 4 * np.abs(u)), "test", covariates=("u",)))
    splits = make_splits(regular, 48, 12, 96, 48, stride=12, covariates=("u",))
    train = replace(Settings.from_config(TINY).train, max_epochs=100, steps_per_epoch=40, patience=15)
    maes = {}
    for hidden in (0, 32):
        torch.manual_seed(0)
        model = Forecaster(replace(ARGS, known_hidden=hidden))
        anchor_head(model, splits.train)
        fine_tune(model, splits, train)
        maes[hidden] = evaluate(model, splits.test)["mae"]
    assert maes[32] < 0.6 * maes[0], maes  # y moves by 4|u|: no step-wise linear term of u says how much
    assert any(k.startswith("known.mlp.") for k in model.encoder.state_dict())  # shared, not in the head


def test_only_the_encoder_leaves_a_site_and_the_site_keeps_its_covariate_statistics(tmp_path):
    site = Site.open("s0", validate(driven(), "test", covariates=("u",)), tmp_path / "state",
                     DataArgs(val_size=96, test_size=48, stride=12), SiteArgs(stat_models=""))
    start = Forecaster(ARGS).encoder.state_dict()
    sent, _ = site.train_round(ARGS, Settings.from_config(TINY).train, start, 1)
    assert set(sent) == set(start) and {"known.level", "known.change", "known.bias"} <= set(sent)
    assert not any("exog" in key for key in sent)  # the site's covariate mean and std stay in its head
    assert any(not torch.equal(sent[k], start[k]) for k in ("known.level", "known.change"))
    kept = torch.load(site.model_path, weights_only=False)["state_dict"]
    assert kept["head.exog_std"].item() == pytest.approx(driven()["u"][:600 - 144].std(ddof=0), rel=0.1)


@pytest.mark.parametrize("hidden", [0, 8])
def test_a_pretrained_encoder_without_covariates_starts_the_correction_at_zero(hidden):
    torch.manual_seed(0)
    plain = Forecaster(replace(ARGS, futr_exog=())).eval()
    model = with_covariates(plain, replace(ARGS, known_hidden=hidden)).eval()
    x = torch.randn(4, 48)
    exog = torch.randn(4, 13, 1)
    torch.testing.assert_close(model(x, exog), plain(x))
    with pytest.raises(ValueError, match=r"reads covariates \['u'\]"):
        model(x)
    with pytest.raises(ValueError, match="beyond futr_exog"):
        with_covariates(plain, replace(ARGS, horizon=6))


def test_forecast_reads_the_covariates_over_the_horizon(tmp_path, capsys):
    frame = driven(2, 300)
    history, ahead = frame[frame["ds"] < "2024-01-12"], frame[frame["ds"] >= "2024-01-12"]
    data, future = tmp_path / "history.csv", tmp_path / "future.csv"
    history.to_csv(data, index=False)
    regular, _ = regularize(validate(history, "test", covariates=("u",)))
    torch.manual_seed(0)
    model = Forecaster(ARGS)
    anchor_head(model, make_splits(regular, 48, 12, 96, 48, stride=12, covariates=("u",)).train)
    torch.nn.init.normal_(model.encoder.known.level)  # a correction that depends on u
    state = tmp_path / "state"
    save_model(state / "model.pt", model, {"round": 1, "phase": "evaluate"})
    write_json(state / "guard.json", {"round": 1, "serve": "federated", "alone_choice": "naive"})
    out = tmp_path / "forecast.csv"
    argv = ["--state-dir", str(state), "--data", str(data), "--out", str(out)]

    assert forecast_main(argv) == 1
    assert "pass their values over the horizon with --future" in capsys.readouterr().err
    ahead.iloc[1:][["unique_id", "ds", "u"]].to_csv(future, index=False)  # s0's first step missing
    assert forecast_main(argv + ["--future", str(future)]) == 1
    assert "series s0 has no row at 2024-01-12 00:00:00" in capsys.readouterr().err

    ahead[["unique_id", "ds", "u"]].to_csv(future, index=False)
    assert forecast_main(argv + ["--future", str(future)]) == 0
    got = pd.read_csv(out)
    for uid, g in regular.groupby("unique_id"):
        exog = np.concatenate([g["u"].to_numpy()[-1:], ahead.loc[ahead["unique_id"] == uid, "u"].to_numpy()[:12]])
        want = predict(model, g["y"].to_numpy(np.float32)[None, -48:], exog.astype(np.float32)[None, :, None])[0]
        np.testing.assert_allclose(got.loc[got["unique_id"] == uid, "y_hat"], want, rtol=1e-5)
    assert json.loads((state / "guard.json").read_text())["serve"] == "federated"


@pytest.mark.flower
def test_compare_runs_the_federation_with_covariates(tmp_path):
    from simulations.compare import main as compare
    from tests.test_compare import MODEL_KEYS

    data = tmp_path / "sites.parquet"
    pd.concat([driven(2, 24 * 25, seed=s).assign(site=f"site{s}", unique_id=lambda d, s=s: f"{s}-" + d["unique_id"])
               for s in range(3)]).to_parquet(data)
    argv = ["--data", str(data), "--out", str(tmp_path / "report"), "--history", "264", "--cutoffs", "1",
            "--rounds", "2", "--lookback", "48", "--horizon", "12", "--val-size", "96", "--test-size", "48",
            "--stride", "12", "--arms", "federated,pooled_oracle", "--set", f"cache-dir={tmp_path / 'cache'}",
            "--set", "futr-exog=u", "--set", "stat-models="]
    for key in MODEL_KEYS:
        argv += ["--set", f"{key}={TINY[key]}"]
    assert compare(argv) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["config"]["run_config"]["futr-exog"] == "u"
    rows = {(r["site"], r["arm"]): r for r in report["per_site"]}
    for site in ("site0", "site1", "site2"):  # y moves by 4u: with u known ahead the model beats the simple
        simple = min(rows[(site, arm)]["mae"] for arm in ("naive", "seasonal_naive_24"))  # forecasts in 2 rounds
        assert rows[(site, "federated")]["mae"] < simple and rows[(site, "pooled_oracle")]["mae"] < simple
