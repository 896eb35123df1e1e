"""`python -m client.forecast`: a trained site forecasts its next horizon with what its guard serves."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from client.forecast import MAX_PANELS, main, plot
from client.site import Site
from shared.checkpoint import load_model
from shared.config import Settings
from shared.data import regularize
from shared.sites import read_sites, select_site
from shared.train import predict
from tests.conftest import TINY

SITE = "site02"  # three series


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A site state after one evaluation (model.pt, guard.json, alone.json, local_only.pt) and its data."""
    root = tmp_path_factory.mktemp("forecast")
    settings = Settings.from_config(TINY)
    frame = read_sites(settings.data)
    name, rows = select_site(frame, "demo", name=SITE)
    site = Site.open(name, rows, root / "state", settings.data)
    from shared.model import Forecaster

    args = settings.model
    site.evaluate_round(args, settings.train, Forecaster(args).encoder.state_dict(), 1)
    data = root / "series.csv"
    frame.to_csv(data, index=False)  # every site of the demo: --site-name picks one
    return {"state": site.state_dir, "data": data, "args": args, "history": regularize(rows)[0]}


@pytest.fixture
def state(trained, tmp_path):
    """A private copy of the trained state, to rewrite guard.json in."""
    return shutil.copytree(trained["state"], tmp_path / "state")


def serve(state, serve, alone_choice="naive"):
    guard = json.loads((state / "guard.json").read_text())
    (state / "guard.json").write_text(json.dumps({**guard, "serve": serve, "alone_choice": alone_choice}))


def run(state, trained, out, *extra):
    return main(["--state-dir", str(state), "--data", str(trained["data"]), "--out", str(out),
                 "--site-name", SITE, *map(str, extra)])


def read(path):
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, parse_dates=["ds"])


def last_windows(trained, points=None):
    """Each series' last `points` filled values (None: all), in the order of the data."""
    history = trained["history"]
    return {uid: g["y"].to_numpy()[-points if points else 0:] for uid, g in history.groupby("unique_id", sort=False)}


def check_grid(table, trained):
    history, horizon = trained["history"], trained["args"].horizon
    uids = list(pd.unique(history["unique_id"]))
    assert list(table.columns) == ["unique_id", "ds", "y_hat"]
    assert len(table) == len(uids) * horizon and list(pd.unique(table["unique_id"])) == uids
    assert table["y_hat"].notna().all()
    for uid, g in table.groupby("unique_id", sort=False):
        last = history.loc[history["unique_id"] == uid, "ds"].iloc[-1]
        expected = last + pd.Timedelta(hours=1) * np.arange(1, horizon + 1)
        assert list(g["ds"]) == list(expected)


def test_federated_forecast_is_the_models_prediction_on_the_last_window(state, trained, tmp_path, capsys):
    serve(state, "federated")
    out = tmp_path / "f.csv"
    assert run(state, trained, out) == 0
    assert "federated" in capsys.readouterr().out
    table = read(out)
    check_grid(table, trained)
    model, _ = load_model(state / "model.pt")
    windows = last_windows(trained, trained["args"].lookback)
    expected = predict(model, np.stack(list(windows.values())).astype(np.float32))
    np.testing.assert_allclose(table["y_hat"].to_numpy().reshape(expected.shape), expected, rtol=1e-5)


def test_seasonal_naive_repeats_the_last_season_and_parquet_works(state, trained, tmp_path, capsys):
    serve(state, "alone_best", "seasonal_naive_24")
    out = tmp_path / "f.parquet"
    assert run(state, trained, out) == 0
    assert "alone_best: seasonal_naive_24" in capsys.readouterr().out
    table = read(out)
    check_grid(table, trained)
    horizon = trained["args"].horizon
    for (uid, last_day), (_, g) in zip(last_windows(trained, 24).items(), table.groupby("unique_id", sort=False)):
        np.testing.assert_allclose(g["y_hat"].to_numpy(), np.tile(last_day, 2)[:horizon], rtol=1e-6)


def test_statistical_choice_is_fitted_on_the_whole_history(state, trained, tmp_path):
    from statsforecast.models import AutoTheta

    serve(state, "alone_best", "auto_theta")
    out = tmp_path / "f.csv"
    assert run(state, trained, out) == 0
    table = read(out)
    check_grid(table, trained)
    horizon = trained["args"].horizon
    for (uid, y), (_, g) in zip(last_windows(trained).items(), table.groupby("unique_id", sort=False)):
        expected = AutoTheta(season_length=24).fit(y).predict(h=horizon)["mean"]
        np.testing.assert_allclose(g["y_hat"].to_numpy(), expected, rtol=1e-6)


def test_local_only_is_read_from_the_alone_folder(state, trained, tmp_path):
    serve(state, "alone_best", "local_only")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.move(state / "local_only.pt", alone / "local_only.pt")
    out = tmp_path / "f.csv"
    assert run(state, trained, out) == 1  # not in the state folder: a clear error, no fallback
    assert run(state, trained, out, "--alone-dir", alone) == 0
    model, _ = load_model(alone / "local_only.pt")
    windows = last_windows(trained, trained["args"].lookback)
    expected = predict(model, np.stack(list(windows.values())).astype(np.float32))
    np.testing.assert_allclose(read(out)["y_hat"].to_numpy().reshape(expected.shape), expected, rtol=1e-5)


def test_plot_is_a_png(state, trained, tmp_path, capsys):
    png = tmp_path / "f.png"
    assert run(state, trained, tmp_path / "f.csv", "--plot", png, "--history-points", 60) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot -> {png}" in capsys.readouterr().out


def test_plot_caps_the_panels(trained, tmp_path):
    history = pd.concat([trained["history"].assign(unique_id=f"s{i}") for i in range(MAX_PANELS + 2)])
    forecast = pd.DataFrame({"unique_id": [f"s{i}" for i in range(MAX_PANELS + 2)],
                             "ds": history["ds"].iloc[-1] + pd.Timedelta(hours=1), "y_hat": 1.0})
    assert plot(tmp_path / "p.png", history, forecast, 48, "t") == MAX_PANELS


def test_missing_guard_is_an_error_not_a_fallback(state, trained, tmp_path, capsys):
    (state / "guard.json").unlink()
    out = tmp_path / "f.csv"
    assert run(state, trained, out) == 1
    err = capsys.readouterr().err
    assert "guard.json not found" in err and "never evaluated" in err
    assert not out.exists()


def test_series_shorter_than_the_lookback(state, trained, tmp_path, capsys):
    short = trained["history"].groupby("unique_id").tail(30)[["site", "unique_id", "ds", "y"]]
    data = tmp_path / "short.csv"
    short.to_csv(data, index=False)
    uid = short["unique_id"].iloc[0]
    assert main(["--state-dir", str(state), "--data", str(data), "--out", str(tmp_path / "f.csv")]) == 1
    assert f"series {uid} has 30 points" in capsys.readouterr().err


def test_site_selection_errors(state, trained, tmp_path, capsys):
    out = tmp_path / "f.csv"
    assert main(["--state-dir", str(state), "--data", str(trained["data"]), "--out", str(out),
                 "--site-name", "nowhere"]) == 1
    assert "no site named 'nowhere'" in capsys.readouterr().err
    assert main(["--state-dir", str(state), "--data", str(trained["data"]), "--out", str(out)]) == 1
    assert "say which one" in capsys.readouterr().err
    assert run(state, trained, tmp_path / "f.xlsx") == 1
    assert "unsupported output type" in capsys.readouterr().err


def test_gaps_are_filled_as_in_training(state, trained, tmp_path):
    """A missing timestamp in the last season is interpolated before the seasonal naive repeats it."""
    serve(state, "alone_best", "seasonal_naive_24")
    rows = trained["history"][["site", "unique_id", "ds", "y"]]
    uid = rows["unique_id"].iloc[0]
    own = rows[rows["unique_id"] == uid]
    dropped = own.index[-24 + 3]  # the 4th point of the last day: the forecast's 4th step
    data = tmp_path / "gappy.csv"
    rows.drop(index=dropped).to_csv(data, index=False)
    out = tmp_path / "f.csv"
    assert main(["--state-dir", str(state), "--data", str(data), "--out", str(out)]) == 0
    table = read(out)
    check_grid(table, trained)
    before, after = rows.loc[dropped - 1, "y"], rows.loc[dropped + 1, "y"]
    assert table[table["unique_id"] == uid]["y_hat"].iloc[3] == pytest.approx((before + after) / 2)


def test_a_model_newer_than_the_guards_judgement_is_flagged(state, trained, tmp_path, capsys):
    from shared.checkpoint import save_model

    serve(state, "federated")
    model, _ = load_model(state / "model.pt")
    save_model(state / "model.pt", model, {"round": 2, "phase": "train"})
    assert run(state, trained, tmp_path / "f.csv") == 0
    assert "guard judged round 1" in capsys.readouterr().err
