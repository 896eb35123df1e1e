"""Pretraining the shared encoder on a synthetic or mixed real-and-synthetic corpus (and optionally a public data file)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from shared import wire
from shared.checkpoint import load_model, save_model, write_atomic
from shared.config import Settings, TrainArgs
from shared.corpus import SHARES, SOURCES, mixed_corpus
from shared.data import Splits, Windows, read_long, regularize
from shared.model import Forecaster, ModelArgs
from shared.synthetic import kernel_synth
from shared.train import train_shared

VAL_SHARE = 0.1  # share of corpus series held out (whole series) for early stopping
SHIPPED_DIR = Path(__file__).with_name("checkpoints")  # pretrained encoders shipped with the product
SHIPPED_FORMAT = "fedts-encoder/1"
RECIPE = 5  # part of the cache key: raise it when pretraining code changes what it makes


def series_windows(series: list[np.ndarray], lookback: int, horizon: int, per_series: int, seed: int) -> Windows:
    """Up to `per_series` random windows from each series (all its windows when it has fewer), each series
    standardised first: the model normalises every window anyway, and the validation MAE that stops
    pretraining then weighs every series alike instead of by its units."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for raw in series:
        std = float(np.std(raw))
        values = (raw - np.mean(raw)) / (std if std > 0 else 1.0)
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


def write_shipped(path: str | Path, model: Forecaster, meta: dict) -> str:
    """Write a pretrained encoder as a shipped checkpoint (JSON: Flower packages an App's .json files, not
    binary ones, and at most 1 MB each): its model arguments, the encoder's float32 weights as one base64
    array in a named layout, their SHA-256, and how it was made. Returns the SHA-256."""
    state = model.encoder.state_dict()
    flat = wire.pack(state)[wire.KEY].numpy().astype("<f4")
    digest = hashlib.sha256(flat.tobytes()).hexdigest()
    payload = {"format": SHIPPED_FORMAT, "model_args": model.args.to_dict(), "layout": wire.dumps(wire.layout_of(state)),
               "sha256": digest, "meta": meta, "weights": base64.b64encode(flat.tobytes()).decode()}
    text = json.dumps(payload, indent=1, sort_keys=True)
    write_atomic(path, lambda f: f.write(text.encode()))
    return digest


def read_shipped(path: str | Path) -> tuple[Forecaster, dict]:
    """A shipped checkpoint's model (the encoder, a fresh head) and what it records; ValueError naming the file
    if it is not one or its weights do not match their SHA-256."""
    try:
        payload = json.loads(Path(path).read_text())
        if payload.get("format") != SHIPPED_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {SHIPPED_FORMAT!r}")
        raw = base64.b64decode(payload["weights"])
        if hashlib.sha256(raw).hexdigest() != payload["sha256"]:
            raise ValueError("its weights do not match their SHA-256")
        model = Forecaster(ModelArgs.from_dict(payload["model_args"]))
        flat = torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
        model.encoder.load_state_dict(wire.unpack({wire.KEY: flat}, wire.loads(payload["layout"])))
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: not a usable shipped checkpoint ({exc})") from exc
    return model, {**payload["meta"], "sha256": payload["sha256"]}


def shipped_for(args: ModelArgs) -> Path | None:
    """The shipped checkpoint made for these model arguments (covariates aside), if there is one."""
    wanted = args.without_covariates().to_dict()
    for path in sorted(SHIPPED_DIR.glob("*.json")):
        if json.loads(path.read_text()).get("model_args") == wanted:
            return path
    return None


def initial_model(settings: Settings) -> tuple[Forecaster, dict]:
    """The encoder to start from. init "pretrained": `pretrained-path` if set, else the shipped checkpoint
    made for the run's model (shared/checkpoints), else one pretrained now on the configured corpus (and
    cached); "pretrain": pretrained now (cached) even where one is shipped; "random": random weights."""
    fed = settings.federation
    if fed.init == "random":
        torch.manual_seed(fed.seed)
        return Forecaster(settings.model), {"source": "random", "seed": fed.seed}
    if fed.init not in ("pretrained", "pretrain"):
        raise ValueError(f"init must be 'pretrained', 'pretrain' or 'random', not {fed.init!r}")
    shipped = shipped_for(settings.model) if fed.init == "pretrained" and not fed.pretrained_path else None
    if shipped is not None:
        model, meta = read_shipped(shipped)
        return with_covariates(model, settings.model), {"source": str(shipped), **meta}
    if fed.pretrained_path:
        path = fed.pretrained_path
        model, meta = read_shipped(path) if path.endswith(".json") else load_model(path)
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
