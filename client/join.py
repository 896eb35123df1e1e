"""Before (or on) joining with little history: how the federation's shared model does on this site's
own series, what the new-site guard would serve, and a forecast of the next horizon with it.

    python -m client.join --encoder global_encoder.pt --data my_series.csv --out forecast.csv
        [--prior summary.json] [--report join.json] [--site-column site] [--site-name NAME]
        [--freq D] [--val-size N] [--stride N] [--stat-models "auto_ets auto_theta"]

--encoder is the coordinator's published encoder (the server's global_encoder.pt); --prior its
summary.json, whose new_site_prior holds the established sites' evidence (how often the shared
forecast beat, and lost by more than 5 % to, their alone choice with short histories; without it the
site keeps its alone choice). The site needs at least one lookback of
history. It picks its alone option on its last horizon; once its history holds validation windows
beyond a lookback, it also compares the shared forecast with that choice on them. The decision
(shared.guard.decide_new), with its figures, goes to --report (JSON). Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from client.forecast import OUT_SUFFIXES, Served, forecast_frame, write_table
from shared.checkpoint import load_encoder, write_json
from shared.data import DataError, read_long, regularize, season_length
from shared.guard import Prior, decide_new
from shared.model import Forecaster, ModelArgs
from shared.newsite import own_val_size, pick_alone, short_history_evidence
from shared.sites import select_site


def read_encoder(path: Path) -> Forecaster:
    """The shared model of a published encoder file, with a fresh (identity) head."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = Forecaster(ModelArgs.from_dict(saved["model_args"]))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not an encoder file written by the server ({e})") from e
    load_encoder(model, saved["encoder"])
    return model.eval()


def read_prior(path: Path | None, history: int) -> tuple[Prior, int | None]:
    """(prior, history length measured) for a site with `history` points: the longest length the established
    sites measured that does not exceed it, else the shortest; (an empty prior, None) without one."""
    if path is None:
        return Prior(), None
    try:
        reported = {int(h): Prior(**v) for h, v in json.loads(path.read_text())["new_site_prior"].items()}
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: no valid new_site_prior (a summary.json of a run with prior-histories set): "
                        f"{e}") from e
    if not reported:
        raise DataError(f"{path}: new_site_prior is empty (the run had no prior-histories)")
    fitting = [h for h in reported if h <= history]
    length = max(fitting) if fitting else min(reported)
    return reported[length], length


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, type=Path, help="the coordinator's global_encoder.pt")
    parser.add_argument("--data", required=True, help="the site's long-format series (.csv, .csv.gz, .parquet)")
    parser.add_argument("--out", required=True, type=Path, help="forecast file (.csv or .parquet)")
    parser.add_argument("--prior", type=Path, help="the coordinator's summary.json (its new_site_prior)")
    parser.add_argument("--report", type=Path, help="write the decision and its figures here (JSON)")
    parser.add_argument("--site-column", default="site")
    parser.add_argument("--site-name", help="the site, when the file holds several")
    parser.add_argument("--freq", help="pandas frequency alias (default: inferred)")
    parser.add_argument("--val-size", type=int, help="most validation points taken from the history (default: "
                        "two lookbacks)")
    parser.add_argument("--stride", type=int, help="points between validation origins (default: the season)")
    parser.add_argument("--stat-models", default="auto_ets auto_theta", help="statistical alone options")
    args = parser.parse_args(argv)
    try:
        if args.out.suffix.lower() not in OUT_SUFFIXES:
            raise DataError(f"{args.out}: unsupported output type (use {', '.join(OUT_SUFFIXES)})")
        model = read_encoder(args.encoder)
        margs = model.args
        frame = read_long(args.data, site_col=args.site_column or None, freq=args.freq)
        site, frame = select_site(frame, args.data, name=args.site_name)
        regular, _ = regularize(frame)
        history = int(regular.groupby("unique_id").size().min())
        if history < margs.lookback:
            raise DataError(f"{args.data}: site {site} has {history} points in its shortest series; the shared "
                            f"model needs at least its lookback, {margs.lookback}")
        season = season_length(regular.attrs["freq"])
        stats = tuple(args.stat_models.split())
        choice = pick_alone(regular, margs.horizon, margs.lags, season, stats)
        val = own_val_size(history, margs.lookback, margs.horizon, args.stride or season,
                           args.val_size or 2 * margs.lookback)
        own = short_history_evidence(regular, model, history - val, val, args.stride or season, season, stats) \
            if val else None
        prior, measured = read_prior(args.prior, history)
        decision = decide_new(history, prior, own.shared_mae if own else [], own.alone_mae if own else [])
        served = Served("shared", model, margs) if decision.serve == "shared" else \
            Served(f"alone_best: {choice}", choice, margs)
        forecast, _ = forecast_frame(frame, served, None)
        write_table(args.out, forecast)
        figures = {"site": site, "alone_choice": choice, "prior_history": measured, **decision.to_dict(),
                   "own_val_mae_shared": float(own.shared_mae.mean()) if own and val else None,
                   "own_val_mae_alone": float(own.alone_mae.mean()) if own and val else None}
        if args.report:
            write_json(args.report, figures)
        print(f"{site}: {history} points; serves {served.label} (score {decision.score:.2f}, threshold "
              f"{decision.threshold}; loss share {decision.loss_share:.2f}, at most {decision.max_loss_share}; "
              f"prior: of {prior.sites} established sites {prior.won} won, {prior.lost} lost; own wins "
              f"{decision.own_wins}/{decision.own_windows}) -> {args.out}")
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
