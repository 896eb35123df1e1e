"""What pooling every site's windows could give at all, with the simplest global models.

    python -m simulations.ceiling beijing|nn5 [--out DIR]     # a benchmark preset (../shared/data)
    python -m simulations.ceiling --data FILE --history H ... # the compare options it reads

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
- `combination`: the mean of `pooled_ridge` and `stat_choice`; `combination_if_better`: that mean
  only where the site's validation MAE says it beats `stat_choice`.

Writes DIR/ceiling.json (per site and cutoff, and a summary per arm) and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shared.baselines import seasonal_naive, simple_name
from shared.checkpoint import write_json
from shared.config import DataArgs, frequency_defaults
from shared.data import Windows, make_splits, regularize, season_length, seasons
from shared.metrics import forecast_errors
from shared.model import EPS
from shared.sites import read_sites
from shared.statistical import STAT_MODELS, frame_n_train, statistical_predictions
from simulations.benchmark import PRESETS
from simulations.compare import cutoff_times, window_slice

PENALTIES = (1.0, 10.0, 100.0, 1e3, 1e4)
ARMS = ("pooled_ridge", "local_ridge", "pooled_ridge_on_naive", "combination", "combination_if_better")


def design(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised window with an intercept column, mean, std) per window."""
    mean, std = x.mean(1, keepdims=True), x.std(1, keepdims=True) + EPS
    return np.hstack([(x - mean) / std, np.ones((len(x), 1))]), mean, std


class Ridge:
    """Ridge regression of the normalised horizon on the normalised window (optionally of its
    difference from persistence), fitted on a set of training windows."""

    def __init__(self, train: list[Windows], on_naive: bool = False):
        parts = [design(w.x) for w in train]
        self.on_naive = on_naive
        self.z = np.vstack([z for z, _, _ in parts])
        self.t = np.vstack([(w.y - m) / s - (z[:, -2:-1] if on_naive else 0) for w, (z, m, s) in zip(train, parts)])
        self.gram, self.cross = self.z.T @ self.z, self.z.T @ self.t
        self.weights = None

    def fit(self, penalty: float) -> Ridge:
        self.weights = np.linalg.solve(self.gram + penalty * np.eye(len(self.gram)), self.cross)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z, mean, std = design(x)
        return (z @ self.weights + (z[:, -2:-1] if self.on_naive else 0)) * std + mean

    def tuned(self, val: list[Windows]) -> Ridge:
        """Refit with the penalty of lowest mean validation MAE over `val` (one entry per site)."""
        def score(p):
            self.fit(p)
            return np.mean([mae(self.predict(w.x), w) for w in val])
        return self.fit(min(PENALTIES, key=score))


def mae(pred: np.ndarray, w: Windows) -> float:
    return forecast_errors(pred, w.y, w.mask, w.scale)["mae"]


def stat_choice(frame: pd.DataFrame, val: Windows, test: Windows, horizon: int, lags: list[int],
                val_size: int, test_size: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, validation forecasts, test forecasts) of the site's best simple or statistical option."""
    options = {simple_name(lag): (seasonal_naive(val.x, horizon, lag), seasonal_naive(test.x, horizon, lag))
               for lag in lags}
    both = Windows.concat([val, test], val.x.shape[1], horizon)
    n_train = frame_n_train(frame, val_size, test_size)
    for model in STAT_MODELS:
        pred = statistical_predictions(frame, both, n_train, horizon, season_length(frame.attrs["freq"]), model).pred
        options[model] = (pred[: len(val)], pred[len(val):])
    best = min(options, key=lambda name: (mae(options[name][0], val), name))
    return best, *options[best]


def run_cutoff(part: pd.DataFrame, config: dict) -> list[dict]:
    """Rows {site, arm, mae, skill} of one cutoff's slice of the data."""
    lookback, horizon = int(config["lookback"]), int(config["horizon"])
    val_size, test_size = int(config["val-size"]), int(config["test-size"])
    lags = [lag for lag in map(int, str(config["lags"]).split()) if lag <= lookback]
    sites = {}
    for name, rows in part.groupby("site", sort=True):
        rows = rows.reset_index(drop=True)
        rows.attrs = dict(part.attrs)
        frame, _ = regularize(rows)
        splits = make_splits(frame, lookback, horizon, val_size, test_size, stride=int(config["stride"]))
        sites[name] = (splits, stat_choice(frame, splits.val, splits.test, horizon, lags, val_size, test_size))
    train, val = [s.train for s, _ in sites.values()], [s.val for s, _ in sites.values()]
    pooled = Ridge(train).tuned(val)
    on_naive = Ridge(train, on_naive=True).tuned(val)
    rows = []
    for name, (splits, (choice, choice_val, choice_test)) in sites.items():
        local = Ridge([splits.train]).tuned([splits.val])
        combo_val = (pooled.predict(splits.val.x) + choice_val) / 2
        combo_test = (pooled.predict(splits.test.x) + choice_test) / 2
        better = mae(combo_val, splits.val) < mae(choice_val, splits.val)
        preds = {"stat_choice": choice_test, "pooled_ridge": pooled.predict(splits.test.x),
                 "local_ridge": local.predict(splits.test.x),
                 "pooled_ridge_on_naive": on_naive.predict(splits.test.x), "combination": combo_test,
                 "combination_if_better": combo_test if better else choice_test}
        base = mae(choice_test, splits.test)
        rows += [{"site": name, "arm": arm, "mae": mae(p, splits.test), "skill": 1 - mae(p, splits.test) / base,
                  "stat_choice": choice} for arm, p in preds.items()]
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for arm in ("stat_choice", *ARMS):
        skill = np.array([r["skill"] for r in rows if r["arm"] == arm])
        out[arm] = {"median_skill": float(np.median(skill)), "mean_skill": float(skill.mean()),
                    "share_better": float((skill > 0).mean()), "worst_skill": float(skill.min()), "n": len(skill)}
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--data", "--out"):
        parser.add_argument(name, default="")
    for name in ("--history", "--lookback", "--horizon", "--val-size", "--test-size", "--stride", "--spacing"):
        parser.add_argument(name, type=int)
    parser.add_argument("--cutoffs", type=int, default=3)
    parser.add_argument("--rounds", "--set", action="append", help="read from a preset; no effect here")
    if argv and argv[0] in PRESETS:
        argv = PRESETS[argv[0]] + ["--out", f"runs/ceiling-{argv[0]}"] + argv[1:]
    args = parser.parse_args(argv)
    if not (args.data and args.out and args.history):
        parser.error("give a preset (beijing, nn5) or --data, --out and --history")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    frame = read_sites(DataArgs(data_path=str(Path(args.data).resolve())))
    config = frequency_defaults(seasons(frame.attrs["freq"]))
    chosen = {"lookback": args.lookback, "horizon": args.horizon, "val-size": args.val_size,
              "test-size": args.test_size, "stride": args.stride}
    config |= {k: v for k, v in chosen.items() if v is not None}
    cutoffs = cutoff_times(frame, args.history, int(config["test-size"]), args.cutoffs,
                           args.spacing or int(config["test-size"]))
    rows = []
    for cutoff in cutoffs:
        part = window_slice(frame, cutoff, args.history, int(config["test-size"]))
        rows += [{**r, "cutoff": str(cutoff)} for r in run_cutoff(part, config)]
        print(f"[{time.monotonic() - started:5.0f} s] cutoff {cutoff}: {part['site'].nunique()} sites", flush=True)
    summary = summarize(rows)
    report = {"config": {"data": args.data, "history": args.history, "cutoffs": [str(c) for c in cutoffs], **config},
              "per_site": rows, "summary": summary, "wall_seconds": time.monotonic() - started}
    write_json(Path(args.out) / "ceiling.json", report)
    print("arm                     median   mean   better   worst   (skill vs stat_choice)")
    for arm, s in summary.items():
        print(f"{arm:22} {s['median_skill']:+7.1%} {s['mean_skill']:+7.1%} {s['share_better']:7.0%} "
              f"{s['worst_skill']:+8.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
