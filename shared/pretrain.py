"""Pretraining the shared encoder on a synthetic or mixed real-and-synthetic corpus (and optionally a public data file)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from shared.checkpoint import load_model, save_model
from shared.config import Settings, TrainArgs
from shared.corpus import SHARES, SOURCES, mixed_corpus
from shared.data import Splits, Windows, read_long, regularize
from shared.model import Forecaster, ModelArgs
from shared.synthetic import kernel_synth
from shared.train import train_shared

VAL_SHARE = 0.1  # share of corpus series held out (whole series) for early stopping
RECIPE = 4  # part of the cache key: raise it when pretraining code changes what it makes


def series_windows(series: list[np.ndarray], lookback: int, horizon: int, per_series: int, seed: int) -> Windows:
    """Up to `per_series` random windows from each series (all its windows when it has fewer)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for values in series:
        n_origins = len(values) - lookback - horizon + 1
        if n_origins < 1:
            continue
        origins = rng.choice(n_origins, size=min(per_series, n_origins), replace=False) + lookback
        idx = origins[:, None] + np.arange(-lookback, horizon)[None, :]
        block = values[idx].astype(np.float32)
        xs.append(block[:, :lookback])
        ys.append(block[:, lookback:])
    if not xs:
        raise ValueError(f"no series is longer than lookback {lookback} + horizon {horizon}")
    x, y = np.concatenate(xs), np.concatenate(ys)
    n = len(x)
    return Windows(x=x, y=y, mask=np.ones_like(y, dtype=bool), scale=np.full(n, np.nan),
                   series=np.full(n, "corpus", dtype=object), origin=np.full(n, np.datetime64("NaT"), "datetime64[ns]"))


def corpus_series(n_series: int, length: int, seed: int, public_path: str = "", corpus: str = "kernelsynth",
                  min_length: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training and validation series (validation held out by whole series): "kernelsynth" =
    KernelSynth series only; "mixed" = real, TSMixup and KernelSynth series (shared.corpus.mixed_corpus,
    segments of at least `min_length` points). Every series of a public long-format file is added when one
    is given (to both sides for "kernelsynth", to training for "mixed")."""
    public = []
    if public_path:
        frame, _ = regularize(read_long(public_path, site_col=None))
        public = [g["y"].to_numpy() for _, g in frame.groupby("unique_id", sort=True)]
    if corpus == "mixed":
        mixed = mixed_corpus(n_series, length, seed, min_length, val_share=VAL_SHARE)
        return [s.values for s in mixed.train] + public, [s.values for s in mixed.val]
    if corpus != "kernelsynth":
        raise ValueError(f"corpus must be 'kernelsynth' or 'mixed', not {corpus!r}")
    series = list(kernel_synth(n_series, length, seed)) + public
    order = np.random.default_rng(seed).permutation(len(series))
    n_val = max(1, int(len(series) * VAL_SHARE))
    return [series[i] for i in order[n_val:]], [series[i] for i in order[:n_val]]


def pretrain(args: ModelArgs, train: TrainArgs, n_series: int, length: int, seed: int,
             public_path: str = "", windows_per_series: int = 64, corpus: str = "kernelsynth") -> tuple[Forecaster, dict]:
    """Train a Forecaster from scratch on the corpus; returns it with the metadata to store."""
    train_series, val_series = corpus_series(n_series, length, seed, public_path, corpus, args.lookback + args.horizon)
    train_set = series_windows(train_series, args.lookback, args.horizon, windows_per_series, seed)
    val_set = series_windows(val_series, args.lookback, args.horizon, windows_per_series, seed + 1)
    splits = Splits(train=train_set, val=val_set, test=val_set)  # no test: pretraining picks nothing on it
    torch.manual_seed(seed)  # the initial weights: same seed and thread count, same checkpoint in any process
    model = Forecaster(args)
    result = train_shared(model, splits, train)  # the encoder's own forecast: what a new site is served
    described = {"generator": "kernel_synth"} if corpus == "kernelsynth" else {
        "generator": "mixed", "shares": SHARES, "sources": list(SOURCES), "val_share": VAL_SHARE}
    meta = {
        "corpus": {**described, "n_series": n_series, "length": length, "seed": seed,
                   "public_path": public_path, "windows_per_series": windows_per_series},
        "train_args": train.__dict__,
        "best_val_mae": result.best_val_mae,
        "epochs": result.epochs,
    }
    return model, meta


def cache_key(args: ModelArgs, train: TrainArgs, n_series: int, length: int, seed: int, public_path: str,
              corpus: str = "kernelsynth") -> str:
    """Stable short hash of everything that determines a pretrained checkpoint."""
    blob = json.dumps([RECIPE, args.to_dict(), train.__dict__, n_series, length, seed, public_path, corpus],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_pretrain(cache_dir: str | Path, args: ModelArgs, train: TrainArgs, n_series: int, length: int,
                    seed: int, public_path: str = "", corpus: str = "kernelsynth") -> tuple[Forecaster, dict, Path]:
    """Load the pretrained checkpoint for these settings from `cache_dir`, or make and store it."""
    path = Path(cache_dir) / f"pretrained-{cache_key(args, train, n_series, length, seed, public_path, corpus)}.pt"
    if path.exists():
        model, meta = load_model(path)
        return model, meta, path
    model, meta = pretrain(args, train, n_series, length, seed, public_path, corpus=corpus)
    save_model(path, model, meta)
    return model, meta, path


def initial_model(settings: Settings) -> tuple[Forecaster, dict]:
    """The encoder to start from: the configured checkpoint, or one pretrained (and cached) now."""
    fed = settings.federation
    if fed.init == "random":
        torch.manual_seed(fed.seed)
        return Forecaster(settings.model), {"source": "random", "seed": fed.seed}
    if fed.init != "pretrained":
        raise ValueError(f"init must be 'pretrained' or 'random', not {fed.init!r}")
    if fed.pretrained_path:
        model, meta = load_model(fed.pretrained_path)
        wanted = (settings.model.lookback, settings.model.horizon)
        if (model.args.lookback, model.args.horizon) != wanted:
            raise ValueError(f"{fed.pretrained_path}: made for lookback {model.args.lookback}, horizon "
                             f"{model.args.horizon}; the run config asks for {wanted[0]}, {wanted[1]}")
        if settings.model.futr_exog and not model.args.futr_exog:
            model = with_covariates(model, replace(model.args, futr_exog=settings.model.futr_exog,
                                                   known_hidden=settings.model.known_hidden))
        return model, {"source": fed.pretrained_path, **meta}
    pretrain_args = replace(settings.train, max_epochs=fed.pretrain_epochs, seed=fed.seed)
    model, meta, path = cached_pretrain(fed.cache_dir, settings.model.without_covariates(), pretrain_args,
                                        fed.corpus_series, fed.corpus_length, fed.seed, corpus=fed.corpus)
    return with_covariates(model, settings.model), {"source": str(path), **meta}


def with_covariates(pretrained: Forecaster, args: ModelArgs) -> Forecaster:
    """The pretrained model as one for `args`, whose covariates the corpus lacks: the same encoder
    with a known-ahead correction at zero (it is learned in the federation)."""
    if pretrained.args == args:
        return pretrained
    if pretrained.args.without_covariates() != args.without_covariates():
        raise ValueError(f"pretrained model arguments {pretrained.args} do not match {args} beyond futr_exog")
    model = Forecaster(args)
    model.encoder.load_state_dict(pretrained.encoder.state_dict(), strict=False)
    model.head.load_state_dict(pretrained.head.state_dict(), strict=False)
    return model
