"""A site's private side: its series, its head and its state folder. Knows nothing of Flower.

State folder (never leaves the site):
  model.pt      the site's latest model (received encoder + its private head) with its arguments
  heads.pt      its head after each of the run's latest phases, so a phase the server repeats
                after a resume starts from the same head as the first time
  guard.json    what the site serves (federated or its best alone option) and why
  site-data-<tag>.parquet  the site's rows of the data file, so later messages need not read it
                (shared.sites.open_slice)
  heads.pt.damaged-<time>  a heads.pt that could not be read, set aside (with a warning) so the site
                starts a fresh head from the global encoder and keeps its other files
Alone folder (the state folder unless configured otherwise):
  alone.json    validation and test errors of every option the site has alone, and the best one
  local_only.pt the site's own architecture trained on its data alone
With a state key (shared.sealing), every one of these files is sealed with it: unreadable without it,
and `versions.sealed` records which copy of each is current, so an older copy is refused.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.baselines import seasonal_naive, simple_name
from shared.checkpoint import load_encoder, load_torch, read_json, save_model, write_atomic, write_json
from shared.config import DataArgs, SiteArgs
from shared.data import GapReport, Splits, Windows, regularize, season_length
from shared.guard import Prior, decide, divide
from shared.scoring import model_scores, scores
from shared.model import Forecaster, ModelArgs
from shared.newsite import short_history_evidence
from shared.results import ArmScores, SiteEvaluation
from shared.sealing import SealError
from shared.sites import site_splits
from shared.statistical import frame_n_train, statistical_predictions
from shared.config import TrainArgs
from shared.train import anchor_head, body_update, fine_tune, round_seed, train_scratch

LOCAL_ONLY_LRS = (3e-3, 1e-3)  # the local-only model gets a small learning-rate search on validation
HEADS_KEPT = 4  # phases of head history kept in heads.pt


def step(server_round: int, phase: str) -> int:
    """A phase's place in a run: round 1 train, round 1 evaluate, round 2 train, ..."""
    return 2 * server_round + (phase == "evaluate")


def _with_seed(train: TrainArgs, seed: int, **changes) -> TrainArgs:
    return replace(train, seed=seed, **changes)


@dataclass
class Site:
    """One site: its regularised series, gap report, state folder, settings and state key (None: plain files)."""

    name: str
    frame: pd.DataFrame
    gaps: GapReport
    state_dir: Path
    data: DataArgs
    options: SiteArgs = SiteArgs()
    key: bytes | None = None

    @classmethod
    def open(cls, name: str, frame: pd.DataFrame, state_dir: str | Path, data: DataArgs,
             options: SiteArgs = SiteArgs(), key: bytes | None = None) -> Site:
        regular, gaps = regularize(frame)
        return cls(name, regular, gaps, Path(state_dir), data, options, key)

    def splits(self, args: ModelArgs) -> Splits:
        return site_splits(self.frame, self.data, args)

    @property
    def model_path(self) -> Path:
        return self.state_dir / "model.pt"

    @property
    def alone_dir(self) -> Path:
        return Path(self.options.alone_dir) / self.name if self.options.alone_dir else self.state_dir

    @property
    def heads_path(self) -> Path:
        return self.state_dir / "heads.pt"

    def _heads(self, args: ModelArgs, run: str) -> dict[int, dict[str, torch.Tensor]]:
        """This run's kept heads by step ({} for a new run, or once a damaged heads.pt is set aside).

        A heads.pt that is not a torch file of kept heads (truncated, overwritten) is renamed
        heads.pt.damaged-<UTC time> with a printed warning, and the site goes on as in a run's first
        phase: a fresh head, the rest of its state untouched. One that does not unseal (SealError:
        another state key, altered, an old copy put back) stops the site, as it may be sound under the
        right key.
        """
        if not self.heads_path.exists():
            return {}
        try:
            kept = load_torch(self.heads_path, self.key)
            kept_run, kept_args, heads = kept["run"], kept["model_args"], dict(kept["heads"])
        except SealError:
            raise
        except (ValueError, LookupError, TypeError) as exc:
            damaged = self.heads_path.with_name(f"heads.pt.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            self.heads_path.rename(damaged)
            print(f"warning: {self.heads_path} is damaged and was set aside as {damaged.name}; site {self.name} "
                  f"starts a fresh head ({exc})", flush=True)
            return {}
        if kept_run != run:
            return {}
        if kept_args != args.to_dict():
            raise ValueError(f"{self.heads_path}: holds heads for other model arguments ({kept_args}); "
                             "move the state folder away to start this site afresh")
        return heads

    def keep(self, model: Forecaster, run: str, at: int) -> None:
        """Save the model (model.pt) and remember its head under `at` for this run."""
        heads = {s: h for s, h in self._heads(model.args, run).items() if s < at}
        heads[at] = model.head.state_dict()
        kept = {"run": run, "model_args": model.args.to_dict(),
                "heads": {s: heads[s] for s in sorted(heads)[-HEADS_KEPT:]}}
        write_atomic(self.heads_path, lambda f: torch.save(kept, f), self.key)
        meta = {"run": run, "round": at // 2, "phase": "evaluate" if at % 2 else "train"}
        save_model(self.model_path, model, meta, self.key)

    def restore(self, args: ModelArgs, received: dict[str, torch.Tensor], exchange: str = "encoder",
                train_windows: Windows | None = None, run: str = "", at: int = 2) -> Forecaster:
        """The received weights with this site's head from its latest phase before step `at`.

        exchange "encoder": `received` is the encoder, the head is the site's own; in a run's first
        phase, a fresh head anchored on the best simple forecast of `train_windows`.
        exchange "model": `received` is the whole model (no private head; a comparison arm).
        """
        model = Forecaster(args)
        if exchange == "model":
            model.load_state_dict(received)
            return model
        heads = self._heads(args, run)
        earlier = [s for s in heads if s < at]
        if earlier:
            model.head.load_state_dict(heads[max(earlier)])
        else:
            anchor_head(model, train_windows if train_windows is not None else self.splits(args).train)
        load_encoder(model, received)
        return model

    def train_round(self, args: ModelArgs, train: TrainArgs, received: dict[str, torch.Tensor],
                    server_round: int, exchange: str = "encoder", run: str = ""
                    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Train on the site's data and return (what goes back to the server, metrics).

        exchange "encoder": fine-tune (head, then head and encoder, early-stopped), keep the head and send
        the encoder; with `train.local_epochs`, that many passes of the encoder alone on its own forecast's
        loss (body_update: the head plays no part, and is trained when the site evaluates).
        exchange "model": train every weight of the received model and send them all.
        """
        splits, _ = divide(self.splits(args))  # training sees the fitting windows only
        at = step(server_round, "train")
        model = self.restore(args, received, exchange, splits.train, run, at)
        seeded = _with_seed(train, round_seed(train.seed, self.name, server_round))
        if exchange == "model":
            fit = train_scratch(model, splits, seeded, epochs=train.local_epochs)
            metrics = {"val-mae-probe": fit.val_curve[0], "val-mae": fit.returned_val_mae,
                       "epochs": fit.epochs}
        else:
            if train.local_epochs:
                fit = body_update(model, splits, seeded, train.local_epochs)
                metrics = {"val-mae-probe": fit.val_curve[0], "val-mae": fit.returned_val_mae, "epochs": fit.epochs}
            else:
                probe, fit = fine_tune(model, splits, seeded)
                metrics = {"val-mae-probe": probe.best_val_mae, "val-mae": fit.returned_val_mae,
                           "epochs": probe.epochs + fit.epochs}
        self.keep(model, run, at)
        sent = model.state_dict() if exchange == "model" else model.encoder.state_dict()
        return sent, {"num-examples": len(splits.train), **metrics}

    def evaluate_round(self, args: ModelArgs, train: TrainArgs, received: dict[str, torch.Tensor],
                       server_round: int, exchange: str = "encoder", run: str = ""
                       ) -> SiteEvaluation:
        """Score the federated model next to every alone option; decide what the site serves.

        exchange "encoder": the site personalises the global encoder (fine-tunes from it with its
        head) and that is its federated model. exchange "model": the global model as received.
        """
        splits = self.splits(args)
        fit, judging = divide(splits)
        at = step(server_round, "evaluate")
        model = self.restore(args, received, exchange, fit.train, run, at)
        short = self.short_history(model) if exchange == "encoder" else {}  # the received encoder, not yet tuned
        if exchange == "encoder":
            fine_tune(model, fit, _with_seed(train, round_seed(train.seed, self.name, -server_round)))
            self.keep(model, run, at)
        federated = model_scores(model, splits)
        alone = self.alone(args, train, splits, fit)
        best = alone["options"][alone["best"]]
        judged = [np.asarray(result["val_windows"])[judging] for result in (federated, best)]
        decision = decide(*judged, margin=self.options.guard_margin)
        write_json(self.state_dir / "guard.json", {"round": server_round, "alone_choice": alone["best"],
                                                   **decision.to_dict()}, self.key)
        arms = {**alone["options"], "alone_best": best, "federated": federated,
                "served": federated if decision.serve == "federated" else best}
        return SiteEvaluation({arm: ArmScores.of(result) for arm, result in arms.items()}, decision,
                              alone["best"], self.gaps.filled, len(splits.test), short)

    def short_history(self, model: Forecaster) -> dict[int, Prior]:
        """Per `prior-histories` length: whether the shared forecast beat, and whether it lost by more than
        5 % to, the alone option this site would pick with only that much history, on its validation
        windows (its test period is left out); lengths its history cannot hold before validation are skipped."""
        data = self.data
        before_test = self.frame[self.frame.groupby("unique_id").cumcount(ascending=False) >= data.test_size]
        before_test.attrs = dict(self.frame.attrs)
        shortest = int(before_test.groupby("unique_id").size().min())
        season = season_length(self.frame.attrs["freq"])
        stats = tuple(self.options.stat_models.split())
        return {h: short_history_evidence(before_test, model, h, data.val_size, data.stride, season, stats)
                .report(self.options.guard_margin)
                for h in self.options.histories if model.args.lookback <= h <= shortest - data.val_size}

    def alone(self, args: ModelArgs, train: TrainArgs, splits: Splits, fit: Splits) -> dict:
        """Every option the site has alone, scored, and the best on validation (cached in alone.json).

        Options: naive and seasonal naive for each of the model's lags, the statistical models,
        and our architecture trained from scratch on this site alone (local_only, steered by the
        fitting windows of `fit`).
        """
        path = self.alone_dir / "alone.json"
        cache_key = {"model_args": args.to_dict(), "train": train.__dict__, "stat_models": self.options.stat_models,
                     "val_size": self.data.val_size, "test_size": self.data.test_size, "stride": self.data.stride}
        if path.exists():
            cached = read_json(path, self.key)
            if cached["key"] == json.loads(json.dumps(cache_key)):
                return cached
        options = {}
        for lag in args.lags:
            options[simple_name(lag)] = scores(seasonal_naive(splits.val.x, args.horizon, lag),
                                   seasonal_naive(splits.test.x, args.horizon, lag), splits)
        season = season_length(self.frame.attrs["freq"])
        n_train = frame_n_train(self.frame, self.data.val_size, self.data.test_size)
        both = Windows.concat([splits.val, splits.test], args.lookback, args.horizon)  # one fit per series
        for stat in self.options.stat_models.split():
            pred = statistical_predictions(self.frame, both, n_train, args.horizon, season, stat).pred
            options[stat] = scores(pred[: len(splits.val)], pred[len(splits.val):], splits)
        model, lr = self._local_only(args, train, fit)
        save_model(self.alone_dir / "local_only.pt", model, {"lr": lr}, self.key)
        options["local_only"] = model_scores(model, splits)
        best = min(options, key=lambda name: (options[name]["val"]["mae"], name))
        result = {"key": cache_key, "options": options, "best": best}
        write_json(path, result, self.key)
        return result

    def _local_only(self, args: ModelArgs, train: TrainArgs, splits: Splits) -> tuple[Forecaster, float]:
        """Our architecture from random weights on this site alone; learning rate chosen on validation."""
        seed = round_seed(train.seed, self.name, 0)
        fits = []
        for lr in LOCAL_ONLY_LRS:
            torch.manual_seed(seed)
            model = Forecaster(args)
            anchor_head(model, splits.train)
            fit = train_scratch(model, splits, _with_seed(train, seed, lr=lr))
            fits.append((fit.best_val_mae, lr, model))
        _, lr, model = min(fits, key=lambda f: (f[0], f[1]))
        return model, lr
