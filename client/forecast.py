"""Forecast a site's series for the next horizon with what its guard chose to serve.

    python -m client.forecast --state-dir SITE_STATE --data my_series.csv --out forecast.csv
        [--plot forecast.png] [--site-column site] [--site-name NAME] [--history-points N]
        [--alone-dir DIR] [--freq h] [--state-key KEY] [--future future_covariates.csv]

Reads the long format used in training, and the site's state folder (client/site.py): guard.json
says what to serve, model.pt is the federated model (its lookback and horizon are the forecast's),
local_only.pt lives in the alone folder; a state sealed with the site's state key (node config state-key)
needs --state-key. Each series is regularised as in training; the forecast starts one step after its
last timestamp. A model trained with known-ahead covariates (futr-exog) needs their values over
the horizon: --future, a file of unique_id, ds and those columns (the history gives the last input
point's). Writes unique_id, ds, y_hat (.csv or .parquet). No Flower.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.baselines import seasonal_naive
from shared.checkpoint import load_model, read_json, write_atomic
from shared.data import DataError, read_long, read_table, regularize, season_length
from shared.model import Forecaster, ModelArgs
from shared.sealing import load_state_key
from shared.sites import select_site
from shared.statistical import SLOW_MODELS, STAT_MODELS, fit_model
from shared.train import predict

OUT_SUFFIXES = (".csv", ".parquet", ".pq")
MAX_PANELS = 12


@dataclass(frozen=True)
class Served:
    """What the site serves: a name for people, and a Forecaster or an alone option's name."""

    label: str  # e.g. "federated", "alone_best: seasonal_naive_24"
    how: Forecaster | str
    args: ModelArgs  # lookback and horizon of the forecast


def load_served(state_dir: Path, alone_dir: Path | None = None, key: bytes | None = None) -> Served:
    """Read guard.json and the model it points to, unsealed with `key` if given; never falls back to anything else."""
    guard_path, model_path = state_dir / "guard.json", state_dir / "model.pt"
    if not guard_path.exists():
        raise DataError(f"{guard_path} not found: this site never evaluated, so its guard has not chosen "
                        "what to serve; run an evaluation round first")
    if not model_path.exists():
        raise DataError(f"{model_path} not found: the site's state folder has no trained model")
    guard = read_json(guard_path, key)
    model, meta = load_model(model_path, key)
    serve, choice = guard.get("serve"), guard.get("alone_choice")
    if serve == "federated":
        if meta.get("phase") != "evaluate" or meta.get("round") != guard.get("round"):
            print(f"warning: {model_path} is from round {meta.get('round')} ({meta.get('phase')}), the guard "
                  f"judged round {guard.get('round')}", file=sys.stderr)
        return Served("federated", model, model.args)
    if serve != "alone_best":
        raise DataError(f"{guard_path}: unknown serve {serve!r} (expected 'federated' or 'alone_best')")
    if choice == "local_only":
        local_path = (alone_dir or state_dir) / "local_only.pt"
        if not local_path.exists():
            raise DataError(f"{local_path} not found: the guard serves local_only (pass --alone-dir if the "
                            "site keeps its alone options elsewhere)")
        local, _ = load_model(local_path, key)
        return Served("alone_best: local_only", local, local.args)
    if choice in ("naive", *STAT_MODELS, *SLOW_MODELS) or str(choice).startswith("seasonal_naive_"):
        return Served(f"alone_best: {choice}", choice, model.args)
    raise DataError(f"{guard_path}: unknown alone_choice {choice!r}")


def future_covariates(future: pd.DataFrame | None, columns: tuple[str, ...], uid: str, last: pd.Series,
                      ds: pd.DatetimeIndex, source: str) -> np.ndarray:
    """Covariates [horizon + 1, C] of one series: at its last input point (`last`, from the history),
    then at each forecast timestamp `ds` (from `future`); a DataError names what is missing."""
    if future is None:
        raise DataError(f"the served model reads covariates {list(columns)}: pass their values over the horizon "
                        "with --future")
    rows = future[future["unique_id"] == uid].set_index("ds")
    absent = ds.difference(rows.index)
    if len(absent):
        raise DataError(f"{source}: series {uid} has no row at {absent[0]} ({len(absent)} of the {len(ds)} "
                        "forecast timestamps missing)")
    ahead = rows.loc[ds, list(columns)]
    if ahead.isna().any().any():
        col = ahead.columns[ahead.isna().any()][0]
        raise DataError(f"{source}: series {uid} has no value of {col} at {ahead.index[ahead[col].isna()][0]}")
    return np.vstack([last[list(columns)].to_numpy(np.float32), ahead.to_numpy(np.float32)])


def forecast_frame(frame: pd.DataFrame, served: Served, future: pd.DataFrame | None = None,
                   future_source: str = "future covariates") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(forecast [unique_id, ds, y_hat], regularised history) of every series of one site's frame;
    `future` holds the covariates over the horizon of a model that reads some."""
    regular, _ = regularize(frame)
    lookback, horizon, freq = served.args.lookback, served.args.horizon, regular.attrs["freq"]
    series = {uid: g for uid, g in regular.groupby("unique_id", sort=False)}
    for uid, g in series.items():
        if len(g) < lookback:
            raise DataError(f"series {uid} has {len(g)} points (gaps filled); the forecast needs the last "
                            f"lookback = {lookback}")
    ys = [g["y"].to_numpy(np.float64) for g in series.values()]
    x = np.stack([y[-lookback:] for y in ys]).astype(np.float32)
    how = served.how
    stamps = {uid: pd.date_range(g["ds"].iloc[-1], periods=horizon + 1, freq=freq)[1:] for uid, g in series.items()}
    if isinstance(how, Forecaster):
        columns = how.args.futr_exog
        exog = np.stack([future_covariates(future, columns, uid, g.iloc[-1], stamps[uid], future_source)
                         for uid, g in series.items()]) if columns else None
        pred = predict(how, x, exog)
    elif how == "naive" or how.startswith("seasonal_naive_"):
        pred = seasonal_naive(x, horizon, 1 if how == "naive" else int(how.rsplit("_", 1)[1]))
    else:  # statistical: fitted on the whole history, as training fits it (no season under two seasons)
        season = season_length(freq)
        pred = np.stack([fit_model(how, y, season if len(y) >= 2 * season else 1).predict(h=horizon)["mean"]
                         for y in ys])
    rows = []
    for (uid, g), p in zip(series.items(), pred):
        if not np.isfinite(p).all():
            raise DataError(f"series {uid}: {served.label} forecast non-finite values")
        rows.append(pd.DataFrame({"unique_id": uid, "ds": stamps[uid], "y_hat": np.asarray(p, np.float64)}))
    return pd.concat(rows, ignore_index=True), regular


def write_table(path: Path, table: pd.DataFrame) -> None:
    if path.suffix.lower() == ".csv":
        write_atomic(path, lambda f: table.to_csv(f, index=False))
    else:
        write_atomic(path, lambda f: table.to_parquet(f, index=False))


def plot(path: Path, history: pd.DataFrame, forecast: pd.DataFrame, points: int, title: str) -> int:
    """One panel per series (at most MAX_PANELS): the last `points` of history and the forecast."""
    from matplotlib.figure import Figure

    uids = list(pd.unique(forecast["unique_id"]))[:MAX_PANELS]
    cols = min(3, len(uids))
    rows = -(-len(uids) // cols)
    fig = Figure(figsize=(5 * cols, 2.8 * rows), dpi=100, layout="constrained")
    for i, uid in enumerate(uids):
        ax = fig.add_subplot(rows, cols, i + 1)
        past = history[history["unique_id"] == uid].tail(points)
        future = forecast[forecast["unique_id"] == uid]
        ax.plot(past["ds"], past["y"], color="0.3", lw=1, label="history")
        ax.plot(future["ds"], future["y_hat"], color="tab:red", lw=1.5, label="forecast")
        ax.axvline(past["ds"].iloc[-1], color="0.6", ls=":", lw=1)
        ax.set_title(str(uid), fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    write_atomic(path, lambda f: fig.savefig(f, format="png"))
    return len(uids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True, type=Path, help="the site's state folder")
    parser.add_argument("--data", required=True, help="long-format series (.csv, .csv.gz, .parquet, .pq)")
    parser.add_argument("--out", required=True, type=Path, help="forecast file (.csv or .parquet)")
    parser.add_argument("--plot", type=Path, help="also draw the forecast to this PNG")
    parser.add_argument("--site-column", default="site", help="column grouping series into sites")
    parser.add_argument("--site-name", help="the site to forecast when the file holds several")
    parser.add_argument("--alone-dir", type=Path, help="folder holding local_only.pt (default: --state-dir)")
    parser.add_argument("--freq", help="pandas frequency alias (default: inferred, as in training)")
    parser.add_argument("--history-points", type=int, help="history shown in the plot (default 3 lookbacks)")
    parser.add_argument("--future", help="known-ahead covariates over the horizon (unique_id, ds and the model's "
                        "futr-exog columns), for a model trained with them")
    parser.add_argument("--state-key", type=Path, help="the site's state key, if its state is sealed (node config "
                        "state-key)")
    args = parser.parse_args(argv)
    try:
        if args.out.suffix.lower() not in OUT_SUFFIXES:
            raise DataError(f"{args.out}: unsupported output type (use {', '.join(OUT_SUFFIXES)})")
        key = load_state_key(args.state_key) if args.state_key else None
        served = load_served(args.state_dir, args.alone_dir, key)
        columns = served.how.args.futr_exog if isinstance(served.how, Forecaster) else ()
        frame = read_long(args.data, site_col=args.site_column or None, freq=args.freq, covariates=columns)
        site, frame = select_site(frame, args.data, name=args.site_name)
        future = None
        if args.future and columns:
            future = read_table(args.future)
            lacking = [col for col in ("unique_id", "ds", *columns) if col not in future.columns]
            if lacking:
                raise DataError(f"{args.future} lacks column(s) {lacking}; it has {list(future.columns)}")
            future = future.assign(unique_id=future["unique_id"].astype(str), ds=pd.to_datetime(future["ds"]))
        forecast, history = forecast_frame(frame, served, future, args.future or "")
        write_table(args.out, forecast)
        n_series, horizon = forecast["unique_id"].nunique(), served.args.horizon
        print(f"forecast {site}: {n_series} series x {horizon} steps ({history.attrs['freq']}) from "
              f"{served.label} -> {args.out}")
        if args.plot:
            points = args.history_points or 3 * served.args.lookback
            shown = plot(args.plot, history, forecast, points, f"{site}: {served.label}")
            capped = f" (first {shown} of {n_series} series)" if shown < n_series else ""
            print(f"plot -> {args.plot}{capped}")
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
