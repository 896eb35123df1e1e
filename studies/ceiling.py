"""What pooling every site's windows could give at all, with the simplest global models.

    python -m studies.ceiling beijing|nn5 [--out DIR]     # a benchmark preset (../shared/data)
    python -m studies.ceiling --data FILE --history H ... # the compare options it reads
    python -m studies.ceiling beijing --covariates ../shared/data/beijing_air/pm25_hourly_with_covariates.parquet \
        --out runs/ceiling-beijing-covariates            # with past weather and pollutants
    python -m studies.ceiling beijing --covariates ... --known-ahead TEMP,PRES,DEWP,RAIN,WSPM \
        --out runs/ceiling-beijing-known-ahead           # and a perfect forecast of the weather
    python -m studies.ceiling nn5 --calendar             # with the calendar, known ahead

A check on the comparison's targets, not an arm: if a model fitted on all sites' pooled windows
(what no site may do) cannot beat a site's best simple or statistical option, a federated model
of those windows is unlikely to. On the same cutoffs, splits and test windows as
`simulations.compare`, per site and cutoff it scores against `stat_choice` (the best of naive,
seasonal naive and the statistical models on validation: `alone_best` without local_only):

- `pooled_ridge`: one ridge regression on every site's training windows, normalised per window
  as the model is (inputs and targets in units of the window's mean and std), its penalty chosen
  on the pooled validation windows; `local_ridge`: the same on the site's windows alone;
- `pooled_ridge_on_naive`: the same pooled ridge predicting the correction to persistence (a
  large penalty gives persistence);
- `pooled_ridge_on_stat`: the pooled ridge of the correction to each site's `stat_choice`, with
  that forecast as one more input (what a head that starts from the statistical forecast could
  learn from pooled windows; training windows get in-sample statistical forecasts);
  `pooled_ridge_on_stat_if_better`: only where the site's validation MAE prefers it;
- `combination`: the mean of `pooled_ridge` and `stat_choice`; `combination_if_better`: that mean
  only where the site's validation MAE says it beats `stat_choice`;
- with `--covariates FILE` (long format, `unique_id, ds` and numeric columns, e.g. weather):
  `pooled_ridge_on_stat_covariates`, `pooled_ridge_on_stat` with every numeric column's value at
  the window's last input time as more inputs (standardised on the pooled training windows, carried
  forward over gaps; nothing of the horizon is known), and its `_if_better`;
- with `--known-ahead COLUMNS` too (comma-separated covariate columns, e.g. the weather's):
  `pooled_ridge_on_stat_known_ahead`, `pooled_ridge_on_stat` with those columns' values at the
  last input time and their actual values at every step of the horizon as more inputs, and its
  `_if_better`. An oracle: a perfect forecast of those columns, an upper bound on what a site's
  weather forecasts could add through this model, not something a site has.
- with `--calendar`: calendar columns (day of week, day of month, hour of day below a day), known
  ahead at any time and so no oracle, join the covariates and the known-ahead columns.
- with `--mlp` beside those: `pooled_mlp_on_stat_known_ahead`, the same inputs and target through
  a one-hidden-layer MLP (early stopping on the pooled validation windows), and its `_if_better`.

Writes DIR/ceiling.json (per site and cutoff, and a summary per arm) and prints the summary.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.baselines import seasonal_naive, simple_name
from shared.checkpoint import write_json
from shared.config import Settings
from shared.data import DataError, Splits, Windows, make_splits, read_table, regularize, season_length
from shared.metrics import forecast_errors
from shared.model import EPS
from shared.statistical import STAT_MODELS, frame_n_train, statistical_predictions
from simulations.benchmark import PRESETS
from simulations.compare import cutoff_times, read_setup, window_slice

PENALTIES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5)
ARMS = ("pooled_ridge", "local_ridge", "pooled_ridge_on_naive", "pooled_ridge_on_stat", "pooled_ridge_on_stat_if_better",
        "combination", "combination_if_better")
COVARIATE_ARMS = ("pooled_ridge_on_stat_covariates", "pooled_ridge_on_stat_covariates_if_better")
KNOWN_AHEAD_ARMS = ("pooled_ridge_on_stat_known_ahead", "pooled_ridge_on_stat_known_ahead_if_better")
MLP_ARMS = ("pooled_mlp_on_stat_known_ahead", "pooled_mlp_on_stat_known_ahead_if_better")


def design(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised window with an intercept column, mean, std) per window."""
    mean, std = x.mean(1, keepdims=True), x.std(1, keepdims=True) + EPS
    return np.hstack([(x - mean) / std, np.ones((len(x), 1))]), mean, std


class Ridge:
    """Ridge regression of the normalised horizon on the normalised window, fitted on a set of
    training windows. With `anchor`, it regresses the correction to an anchor forecast instead
    ("naive": persistence; "given": forecasts passed beside the windows, also an input), so a
    large penalty gives the anchor itself. `extra` are more inputs per window, already scaled."""

    def __init__(self, train: list[Windows], anchor: str = "", given: list[np.ndarray] | None = None,
                 extra: list[np.ndarray] | None = None):
        self.anchor = anchor
        nones = [None] * len(train)
        parts = [self.features(w.x, g, e) for w, g, e in zip(train, given or nones, extra or nones)]
        z = np.vstack([p[0] for p in parts])
        t = np.vstack([(w.y - m) / s - a for w, (_, a, m, s) in zip(train, parts)])
        self.gram, self.cross = z.T @ z, z.T @ t
        self.weights = None

    def features(self, x: np.ndarray, given: np.ndarray | None = None, extra: np.ndarray | None = None):
        """(design, normalised anchor forecast or 0, mean, std) of windows x."""
        z, mean, std = design(x)
        anchor = 0.0
        if self.anchor == "naive":
            anchor = z[:, -2:-1]
        elif self.anchor == "given":
            anchor = (given - mean) / std
            z = np.hstack([z, anchor])
        return (z if extra is None else np.hstack([z, extra])), anchor, mean, std

    def fit(self, penalty: float) -> Ridge:
        self.weights = np.linalg.solve(self.gram + penalty * np.eye(len(self.gram)), self.cross)
        return self

    def predict(self, x: np.ndarray, given: np.ndarray | None = None, extra: np.ndarray | None = None) -> np.ndarray:
        z, anchor, mean, std = self.features(x, given, extra)
        return (z @ self.weights + anchor) * std + mean

    def tuned(self, val: list[Windows], given: list[np.ndarray] | None = None,
              extra: list[np.ndarray] | None = None) -> Ridge:
        """Refit with the penalty of lowest mean validation MAE over `val` (one entry per site)."""
        nones = [None] * len(val)
        given, extra = given or nones, extra or nones

        def score(p):
            self.fit(p)
            return np.mean([forecast_errors(self.predict(w.x, g, e), w.y, w.mask, w.scale)["mae"]
                            for w, g, e in zip(val, given, extra)])
        return self.fit(min(PENALTIES, key=score))


class PooledMLP:
    """A one-hidden-layer MLP of the correction to given forecasts, on Ridge's inputs with anchor
    "given" (the normalised window, the forecast and extra inputs), fitted on every site's training
    windows with the masked MAE and early stopping on every site's validation windows."""

    anchor = "given"
    features = Ridge.features

    def __init__(self, train: list[Windows], given: list[np.ndarray], extra: list[np.ndarray], val: list[Windows],
                 val_given: list[np.ndarray], val_extra: list[np.ndarray], seed: int = 0, patience: int = 10):
        torch.manual_seed(seed)
        (x, t, m), (vx, vt, vm) = (self.tensors(*a) for a in ((train, given, extra), (val, val_given, val_extra)))
        self.net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.GELU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(128, t.shape[1]))
        torch.nn.init.zeros_(self.net[-1].weight), torch.nn.init.zeros_(self.net[-1].bias)  # starts at the forecast
        optimizer = torch.optim.AdamW(self.net.parameters(), 1e-3, weight_decay=1e-2)
        loss = lambda a, b, c: ((self.net(a) - b).abs() * c).sum() / c.sum().clamp(min=1)
        best, state, waited = float("inf"), None, 0
        while waited < patience:
            self.net.train()
            for batch in torch.randperm(len(x)).split(256):
                optimizer.zero_grad()
                loss(x[batch], t[batch], m[batch]).backward()
                optimizer.step()
            self.net.eval()
            with torch.no_grad():
                score = float(loss(vx, vt, vm))
            best, state, waited = ((score, copy.deepcopy(self.net.state_dict()), 0) if score < best - 1e-4
                                   else (best, state, waited + 1))
        self.net.load_state_dict(state)

    def tensors(self, windows: list[Windows], given: list[np.ndarray], extra: list[np.ndarray]):
        """(inputs, normalised correction targets, target mask) of windows pooled over sites."""
        parts = [self.features(w.x, g, e) for w, g, e in zip(windows, given, extra)]
        z = np.vstack([np.nan_to_num(p[0]) for p in parts])
        t = np.vstack([np.nan_to_num((w.y - m) / s - a) for w, (_, a, m, s) in zip(windows, parts)])
        mask = np.vstack([w.mask for w in windows])
        return (torch.tensor(v, dtype=torch.float32) for v in (z, t, mask))

    def predict(self, x: np.ndarray, given: np.ndarray, extra: np.ndarray) -> np.ndarray:
        z, anchor, mean, std = self.features(x, given, extra)
        with torch.no_grad():
            correction = self.net(torch.tensor(np.nan_to_num(z), dtype=torch.float32)).numpy()
        return (correction + anchor) * std + mean


def stat_choice(frame: pd.DataFrame, splits: Splits, horizon: int, lags: list[int], val_size: int,
                test_size: int) -> tuple[str, dict[str, np.ndarray]]:
    """(name, {"train", "val", "test": its forecasts}) of the site's best simple or statistical
    option on validation. A statistical model's parameters are fitted on the training part, so its
    forecasts of training windows are in-sample."""
    parts = ("train", "val", "test")
    options = {simple_name(lag): {k: seasonal_naive(getattr(splits, k).x, horizon, lag) for k in parts}
               for lag in lags}
    every = Windows.concat([getattr(splits, k) for k in parts], splits.val.x.shape[1], horizon)
    ends = np.cumsum([len(getattr(splits, k)) for k in parts])[:-1]
    n_train = frame_n_train(frame, val_size, test_size)
    for model in STAT_MODELS:
        pred = statistical_predictions(frame, every, n_train, horizon, season_length(frame.attrs["freq"]), model).pred
        options[model] = dict(zip(parts, np.split(pred, ends)))
    val = splits.val
    best = min(options, key=lambda name: (forecast_errors(options[name]["val"], val.y, val.mask, val.scale)["mae"], name))
    return best, options[best]


def read_covariates(path: str) -> pd.DataFrame:
    """The numeric columns of a long-format covariates file, indexed by (unique_id, ds), each
    carried forward over gaps within its series."""
    raw = read_table(path)
    missing = sorted({"unique_id", "ds"} - set(raw.columns))
    if missing:
        raise DataError(f"covariates {path}: no column {', '.join(missing)}")
    columns = [c for c in raw.columns if c not in ("unique_id", "ds", "y", "site")
               and pd.api.types.is_numeric_dtype(raw[c])]
    if not columns:
        raise DataError(f"covariates {path}: no numeric column besides unique_id, ds, y, site")
    try:
        ds = pd.to_datetime(raw["ds"]).astype("datetime64[ns]")
    except (ValueError, TypeError) as e:
        raise DataError(f"covariates {path}: column ds: {e}") from e
    raw = raw.assign(unique_id=raw["unique_id"].astype(str), ds=ds).sort_values(["unique_id", "ds"])
    twice = raw.duplicated(["unique_id", "ds"])
    if twice.any():
        row = raw[twice].iloc[0]
        raise DataError(f"covariates {path}: series {row['unique_id']} has {row['ds']} twice")
    raw[columns] = raw.groupby("unique_id")[columns].ffill()
    others = [c for c in raw.columns if c not in (*columns, "unique_id", "ds", "y", "site")]
    print(f"covariates from {path}: {', '.join(columns)}" + (f" (not numeric, left out: {', '.join(others)})" if others else ""))
    return raw.set_index(["unique_id", "ds"])[columns]


def calendar(frame: pd.DataFrame) -> pd.DataFrame:
    """Calendar columns per (unique_id, ds) over each series' span at the data's frequency: day of
    week (one column per day), day of month (two harmonics, days to the month's end, its first and
    last three days) and, below a day, hour of day (two harmonics)."""
    spans = frame.groupby("unique_id")["ds"].agg(["min", "max"])
    ranges = [pd.date_range(lo, hi, freq=frame.attrs["freq"]) for lo, hi in zip(spans["min"], spans["max"])]
    ds = pd.DatetimeIndex(np.concatenate([r.values for r in ranges]))
    index = pd.MultiIndex.from_arrays([np.repeat(spans.index.to_numpy(), [len(r) for r in ranges]), ds],
                                      names=["unique_id", "ds"])
    day, days = ds.day.to_numpy(), ds.days_in_month.to_numpy()
    columns = {f"weekday_{k}": (ds.dayofweek == k).astype(float) for k in range(7)}
    for h in (1, 2):
        columns |= {f"month_sin{h}": np.sin(2 * np.pi * h * (day - 1) / days), f"month_cos{h}": np.cos(2 * np.pi * h * (day - 1) / days)}
    columns |= {"to_month_end": (days - day) / 30, "month_first3": (day <= 3) * 1.0, "month_last3": (days - day < 3) * 1.0}
    if pd.tseries.frequencies.to_offset(frame.attrs["freq"]).nanos < pd.Timedelta(days=1).value:
        hour = ds.hour.to_numpy() + ds.minute.to_numpy() / 60
        for h in (1, 2):
            columns |= {f"hour_sin{h}": np.sin(2 * np.pi * h * hour / 24), f"hour_cos{h}": np.cos(2 * np.pi * h * hour / 24)}
    return pd.DataFrame(columns, index=index)


def covariate_inputs(table: pd.DataFrame, sites: dict, step, offsets=(-1,)) -> dict[str, dict[str, np.ndarray]]:
    """{site: {split: covariates at each window's origin + offset steps, for each offset}} (the
    default: the last input time), each standardised on the pooled training windows; unknown values
    (no row at that time, or only missing values before it) are the training mean."""
    known = set(table.index.get_level_values(0))
    values = {}
    for name, (splits, _, _) in sites.items():
        absent = sorted(set(splits.train.series) - known)
        if absent:
            raise DataError(f"covariates: no rows for series {absent[0]} (site {name})")
        values[name] = {k: np.hstack([table.reindex(pd.MultiIndex.from_arrays(
            [getattr(splits, k).series.astype(str), pd.DatetimeIndex(getattr(splits, k).origin) + offset * step]))
            .to_numpy(float) for offset in offsets]) for k in ("train", "val", "test")}
    pooled = np.vstack([v["train"] for v in values.values()])
    mean, std = np.nanmean(pooled, 0), np.nanstd(pooled, 0)
    std = np.where(std > 0, std, 1.0)
    return {name: {k: np.nan_to_num((v - mean) / std) for k, v in parts.items()} for name, parts in values.items()}


def site_choices(part: pd.DataFrame, settings: Settings) -> dict[str, tuple[Splits, str, dict[str, np.ndarray]]]:
    """{site: (splits, its stat_choice, that option's forecasts per split)} of one cutoff's slice."""
    model, data = settings.model, settings.data
    sites = {}
    for name, rows in part.groupby("site", sort=True):
        rows = rows.reset_index(drop=True)
        rows.attrs = dict(part.attrs)
        frame, _ = regularize(rows)
        splits = make_splits(frame, model.lookback, model.horizon, data.val_size, data.test_size, stride=data.stride)
        sites[name] = (splits, *stat_choice(frame, splits, model.horizon, list(model.lags), data.val_size,
                                            data.test_size))
    return sites


def run_cutoff(part: pd.DataFrame, settings: Settings, covariates: pd.DataFrame | None = None,
               known_ahead: list[str] | None = None, mlp: bool = False) -> list[dict]:
    """Rows {site, arm, mae, skill} of one cutoff's slice of the data."""
    sites = site_choices(part, settings)
    train, val = [s.train for s, _, _ in sites.values()], [s.val for s, _, _ in sites.values()]
    pooled = Ridge(train).tuned(val)
    on_naive = Ridge(train, anchor="naive").tuned(val)
    given = {k: [c[k] for _, _, c in sites.values()] for k in ("train", "val")}
    on_stat = Ridge(train, "given", given["train"]).tuned(val, given["val"])
    if covariates is not None:
        step = pd.tseries.frequencies.to_offset(part.attrs["freq"])
        extra = covariate_inputs(covariates, sites, step)
        with_covariates = Ridge(train, "given", given["train"], [e["train"] for e in extra.values()]).tuned(
            val, given["val"], [e["val"] for e in extra.values()])
    if known_ahead:
        ahead = covariate_inputs(covariates[known_ahead], sites, step, range(-1, settings.model.horizon))
        with_ahead = Ridge(train, "given", given["train"], [e["train"] for e in ahead.values()]).tuned(
            val, given["val"], [e["val"] for e in ahead.values()])
    if known_ahead and mlp:
        nonlinear = PooledMLP(train, given["train"], [e["train"] for e in ahead.values()],
                              val, given["val"], [e["val"] for e in ahead.values()])
    rows = []
    for name, (splits, choice, chosen) in sites.items():
        local = Ridge([splits.train]).tuned([splits.val])
        combo = {k: (pooled.predict(getattr(splits, k).x) + chosen[k]) / 2 for k in ("val", "test")}
        corrected = {k: on_stat.predict(getattr(splits, k).x, chosen[k]) for k in ("val", "test")}
        val, test = splits.val, splits.test
        chosen_val = forecast_errors(chosen["val"], val.y, val.mask, val.scale)["mae"]

        def if_better(option):  # the option only where the site's validation MAE prefers it
            better = forecast_errors(option["val"], val.y, val.mask, val.scale)["mae"] < chosen_val
            return option["test"] if better else chosen["test"]
        preds = {"stat_choice": chosen["test"], "pooled_ridge": pooled.predict(splits.test.x),
                 "local_ridge": local.predict(splits.test.x),
                 "pooled_ridge_on_naive": on_naive.predict(splits.test.x),
                 "pooled_ridge_on_stat": corrected["test"], "pooled_ridge_on_stat_if_better": if_better(corrected),
                 "combination": combo["test"], "combination_if_better": if_better(combo)}
        if covariates is not None:
            informed = {k: with_covariates.predict(getattr(splits, k).x, chosen[k], extra[name][k]) for k in ("val", "test")}
            preds |= {COVARIATE_ARMS[0]: informed["test"], COVARIATE_ARMS[1]: if_better(informed)}
        if known_ahead:
            told = {k: with_ahead.predict(getattr(splits, k).x, chosen[k], ahead[name][k]) for k in ("val", "test")}
            preds |= {KNOWN_AHEAD_ARMS[0]: told["test"], KNOWN_AHEAD_ARMS[1]: if_better(told)}
        if known_ahead and mlp:
            learned = {k: nonlinear.predict(getattr(splits, k).x, chosen[k], ahead[name][k]) for k in ("val", "test")}
            preds |= {MLP_ARMS[0]: learned["test"], MLP_ARMS[1]: if_better(learned)}
        errors = {arm: forecast_errors(p, test.y, test.mask, test.scale)["mae"] for arm, p in preds.items()}
        rows += [{"site": name, "arm": arm, "mae": e, "skill": 1 - e / errors["stat_choice"], "stat_choice": choice}
                 for arm, e in errors.items()]
    return rows


def summarize(rows: list[dict], arms: tuple[str, ...] = ARMS + COVARIATE_ARMS + KNOWN_AHEAD_ARMS + MLP_ARMS) -> dict[str, dict]:
    """Per arm present in rows: median, mean, share better and worst of the skill against stat_choice."""
    out = {}
    for arm in [a for a in ("stat_choice", *arms) if any(r["arm"] == a for r in rows)]:
        skill = np.array([r["skill"] for r in rows if r["arm"] == arm])
        out[arm] = {"median_skill": float(np.median(skill)), "mean_skill": float(skill.mean()),
                    "share_better": float((skill > 0).mean()), "worst_skill": float(skill.min()), "n": len(skill)}
    return out


def print_summary(summary: dict[str, dict]) -> None:
    print(f"{'arm':40}  median    mean  better    worst  (skill vs stat_choice)")
    for arm, s in summary.items():
        print(f"{arm:40} {s['median_skill']:+7.1%} {s['mean_skill']:+7.1%} {s['share_better']:7.0%} "
              f"{s['worst_skill']:+8.1%}")


def parse(argv: list[str], prefix: str = "ceiling", doc: str = __doc__) -> argparse.Namespace:
    """The options of a check on a preset (its report in runs/<prefix>-<name>) or on --data."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--data", "--out", "--covariates"):
        parser.add_argument(name, default="")
    parser.add_argument("--site-column", default="site")
    parser.add_argument("--max-sites", type=int, help="use the first N sites (sorted by name)")
    parser.add_argument("--known-ahead", default="", metavar="COLUMNS",
                        help="covariate columns whose actual values over the horizon are given (an oracle)")
    parser.add_argument("--calendar", action="store_true", help="calendar columns as covariates known ahead")
    parser.add_argument("--mlp", action="store_true", help="with --known-ahead or --calendar: a pooled MLP too")
    for name in ("--history", "--lookback", "--horizon", "--val-size", "--test-size", "--stride", "--spacing"):
        parser.add_argument(name, type=int)
    parser.add_argument("--cutoffs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="read from a preset; no effect here")
    parser.add_argument("--seed", type=int, default=0, help="seeds the checks that train our model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any run-config key, as in "
                        "simulations.compare (e.g. lags; the model and training of the checks that train our model)")
    if argv and argv[0] in PRESETS:
        argv = PRESETS[argv[0]] + ["--out", f"runs/{prefix}-{argv[0]}"] + argv[1:]
    args = parser.parse_args(argv)
    if not (args.data and args.out and args.history):
        parser.error("give a preset (beijing, nn5) or --data, --out and --history")
    return args


def plan(args: argparse.Namespace) -> tuple[pd.DataFrame, dict, Settings, list[pd.Timestamp]]:
    """(sites' data, run config and settings, cutoffs) of parsed options, as the comparison reads them."""
    frame, _, config = read_setup(args)
    settings = Settings.from_config(config)
    test_size = settings.data.test_size
    return frame, config, settings, cutoff_times(frame, args.history, test_size, args.cutoffs, args.spacing or test_size)


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    known_ahead = [c.strip() for c in args.known_ahead.split(",") if c.strip()]
    if known_ahead and not args.covariates:
        raise SystemExit("error: --known-ahead needs --covariates")
    if args.mlp and not (known_ahead or args.calendar):
        raise SystemExit("error: --mlp needs --known-ahead or --calendar")
    covariates = read_covariates(args.covariates) if args.covariates else None
    unknown = [c for c in known_ahead if c not in covariates.columns] if known_ahead else []
    if unknown:
        raise SystemExit(f"error: --known-ahead: {args.covariates} has no numeric column {', '.join(unknown)}")
    try:
        frame, config, settings, cutoffs = plan(args)
    except ValueError as exc:  # bad data (DataError) or run config: the message names the file, key or series
        raise SystemExit(f"error: {exc}") from None
    if args.calendar:
        days = calendar(frame)
        covariates = days if covariates is None else covariates.join(days, how="outer")
        known_ahead += list(days.columns)
    rows = []
    for cutoff in cutoffs:
        part = window_slice(frame, cutoff, args.history, settings.data.test_size)
        rows += [{**r, "cutoff": str(cutoff)} for r in run_cutoff(part, settings, covariates, known_ahead, args.mlp)]
        print(f"[{time.monotonic() - started:5.0f} s] cutoff {cutoff}: {part['site'].nunique()} sites", flush=True)
    summary = summarize(rows)
    report = {"config": {"data": args.data, "covariates": args.covariates, "known_ahead": known_ahead, "calendar": args.calendar, "mlp": args.mlp, "history": args.history, "cutoffs": [str(c) for c in cutoffs], **config},
              "per_site": rows, "summary": summary, "wall_seconds": time.monotonic() - started}
    write_json(Path(args.out) / "ceiling.json", report)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
