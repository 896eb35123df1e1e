"""Which corpus, encoder size and length of pretraining, within the 60-minute budget on 2 cores?

    ./dev python -m studies.pretraining beijing --out runs/pretraining-beijing.json [--variants NAME,...]

Each variant pretrains an encoder (shared.pretrain, the product's recipe) and scores its shared forecast
zero-shot on the benchmark preset's validation windows (every site, every cutoff: no test data) against
AutoTheta and seasonal naive fitted on each site's training part. Reported per variant: pretraining
seconds, parameters, the corpus validation MAE, and the median over site-cutoffs of 1 - MAE / MAE of
AutoTheta (`skill_vs_theta`) and of the best simple forecast (`skill_vs_simple`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from shared.baselines import seasonal_naive
from shared.checkpoint import write_json
from shared.config import Settings
from shared.data import regularize, season_length
from shared.metrics import forecast_errors
from shared.model import count_parameters
from shared.pretrain import pretrain
from shared.sites import sites_splits
from shared.statistical import frame_n_train, statistical_predictions
from shared.train import predict
from simulations.benchmark import PRESETS
from simulations.compare import cutoff_times, read_setup, window_slice

VARIANTS = {  # name: (corpus, model changes, training changes): pretraining stops early on the corpus's validation
    "kernelsynth": ("kernelsynth", {}, {}),
    "mixed": ("mixed", {}, {}),
    "mixed-long": ("mixed", {}, {"max_epochs": 200, "patience": 10, "steps_per_epoch": 100, "batch_size": 128}),
    "mixed-long-d32": ("mixed", {"d_model": 32, "d_ff": 64},
                       {"max_epochs": 200, "patience": 10, "steps_per_epoch": 100, "batch_size": 128}),
    "mixed-long-3layers": ("mixed", {"n_layers": 3},
                           {"max_epochs": 200, "patience": 10, "steps_per_epoch": 100, "batch_size": 128}),
    "mixed-long-d96": ("mixed", {"d_model": 96, "d_ff": 192},
                       {"max_epochs": 200, "patience": 10, "steps_per_epoch": 100, "batch_size": 128}),
}


def validation_sets(preset: str) -> tuple[Settings, list[dict]]:
    """The preset's settings and, per cutoff, every site's validation windows with AutoTheta's and the
    simple forecasts' validation MAE."""
    parser = argparse.ArgumentParser()
    for flag in ("--data", "--history", "--lookback", "--horizon", "--val-size", "--test-size", "--stride",
                 "--cutoffs", "--spacing", "--rounds", "--new-sites", "--new-history"):
        parser.add_argument(flag)
    parser.add_argument("--set", action="append", default=[])
    args, _ = parser.parse_known_args(PRESETS[preset])
    setup = argparse.Namespace(lookback=int(args.lookback), horizon=int(args.horizon), val_size=int(args.val_size),
                               test_size=int(args.test_size), stride=int(args.stride), rounds=1, seed=0,
                               set=args.set, data=args.data, site_column="site", max_sites=None)
    frame, _, config = read_setup(setup)
    settings = Settings.from_config(config)
    history = int(args.history.split(",")[0])
    sets = []
    for cutoff in cutoff_times(frame, history, settings.data.test_size, int(args.cutoffs), int(args.spacing)):
        part = window_slice(frame, cutoff, history, settings.data.test_size)
        for site, splits in sites_splits(part, settings.data, settings.model).items():
            rows = part[part["site"] == site].reset_index(drop=True)
            rows.attrs = dict(part.attrs)
            regular, _ = regularize(rows)
            val = splits.val
            n_train = frame_n_train(regular, settings.data.val_size, settings.data.test_size)
            season = season_length(part.attrs["freq"])
            theta = statistical_predictions(regular, val, n_train, settings.model.horizon, season, "auto_theta").pred
            simple = min(forecast_errors(seasonal_naive(val.x, settings.model.horizon, lag), val.y, val.mask,
                                         val.scale)["mae"] for lag in settings.model.lags)
            sets.append({"site": site, "cutoff": str(cutoff), "val": val,
                         "theta": forecast_errors(theta, val.y, val.mask, val.scale)["mae"], "simple": simple})
    return settings, sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=["beijing", "nn5", "coldstart-nn5"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings, sets = validation_sets(args.preset)
    fed = settings.federation
    results = []
    for name in args.variants.split(","):
        corpus, changes, training = VARIANTS[name]
        model_args = replace(settings.model, **changes)
        train = replace(settings.train, max_epochs=fed.pretrain_epochs, seed=fed.seed) if not training else \
            replace(settings.train, seed=fed.seed, **training)
        started = time.monotonic()
        model, meta = pretrain(model_args, train, fed.corpus_series, fed.corpus_length, fed.seed, corpus=corpus)
        seconds = time.monotonic() - started
        maes = [forecast_errors(predict(model, s["val"].x, head=False), s["val"].y, s["val"].mask,
                                s["val"].scale)["mae"] for s in sets]
        row = {"variant": name, "corpus": corpus, "changes": changes, "training": training,
               "epochs": meta["epochs"], "seconds": seconds, "parameters": count_parameters(model.encoder),
               "corpus_val_mae": meta["best_val_mae"],
               "skill_vs_theta": float(np.median([1 - m / s["theta"] for m, s in zip(maes, sets)])),
               "skill_vs_simple": float(np.median([1 - m / s["simple"] for m, s in zip(maes, sets)]))}
        results.append(row)
        print(json.dumps(row), flush=True)
        write_json(args.out, {"preset": args.preset, "site_cutoffs": len(sets), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
