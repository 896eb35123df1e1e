"""A site's private side: its series, its head and its state folder. Knows nothing of Flower.

State folder (never leaves the site):
  model.pt        the site's latest personalised model (encoder + private head) with its arguments
  local_only.pt   the same architecture trained on this site's data alone
  alone.json      validation and test errors of what the site can do alone
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch

from shared.baselines import best_simple
from shared.checkpoint import load_encoder, load_model, save_model, write_json
from shared.config import DataArgs
from shared.data import GapReport, Splits, make_splits, regularize
from shared.model import Forecaster, ModelArgs
from shared.train import TrainArgs, evaluate, fine_tune, train_scratch

LOCAL_ONLY_LRS = (3e-3, 1e-3)  # the local-only model gets a small learning-rate search on validation


def round_seed(seed: int, site: str, server_round: int) -> int:
    """A seed per (run seed, site, round), stable across processes (unlike hash())."""
    return zlib.crc32(f"{seed}/{site}/{server_round}".encode())


@dataclass
class Site:
    """One site: its regularised series, gap report and state folder."""

    name: str
    frame: pd.DataFrame
    gaps: GapReport
    state_dir: Path
    data: DataArgs

    @classmethod
    def open(cls, name: str, frame: pd.DataFrame, state_dir: str | Path, data: DataArgs) -> Site:
        regular, gaps = regularize(frame)
        return cls(name, regular, gaps, Path(state_dir), data)

    def splits(self, args: ModelArgs) -> Splits:
        return make_splits(self.frame, args.lookback, args.horizon, self.data.val_size,
                           self.data.test_size, stride=self.data.stride)

    @property
    def model_path(self) -> Path:
        return self.state_dir / "model.pt"

    def restore(self, args: ModelArgs, encoder: dict[str, torch.Tensor]) -> Forecaster:
        """The received encoder with this site's head from its last round (a fresh head at first)."""
        model = Forecaster(args)
        if self.model_path.exists():
            previous, _ = load_model(self.model_path)
            if previous.args != args:
                raise ValueError(f"{self.model_path}: holds a model for other arguments "
                                 f"({previous.args}); move it away to start this site afresh")
            model.head.load_state_dict(previous.head.state_dict())
        load_encoder(model, encoder)
        return model

    def train_round(self, args: ModelArgs, train: TrainArgs, encoder: dict[str, torch.Tensor],
                    server_round: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Fine-tune on the site's data; keep the head, return (encoder state, metrics)."""
        splits = self.splits(args)
        model = self.restore(args, encoder)
        seed = round_seed(train.seed, self.name, server_round)
        probe, tuned = fine_tune(model, splits, _with_seed(train, seed))
        save_model(self.model_path, model, {"round": server_round, "phase": "train"})
        metrics = {
            "num-examples": len(splits.train),
            "val-mae-probe": probe.best_val_mae,
            "val-mae": tuned.best_val_mae,
            "epochs": probe.epochs + tuned.epochs,
        }
        return model.encoder.state_dict(), metrics

    def evaluate_round(self, args: ModelArgs, train: TrainArgs, encoder: dict[str, torch.Tensor],
                       server_round: int) -> dict[str, float]:
        """Personalise the global encoder (fine-tune from it with the site's head), then score the
        result next to the alone options. The personalised model is what the site serves."""
        splits = self.splits(args)
        model = self.restore(args, encoder)
        fine_tune(model, splits, _with_seed(train, round_seed(train.seed, self.name, -server_round)))
        save_model(self.model_path, model, {"round": server_round, "phase": "evaluate"})
        fed_val, fed_test = evaluate(model, splits.val), evaluate(model, splits.test)
        alone = self.alone(args, train, splits)
        return {
            "num-examples": len(splits.test),
            "val-mae": fed_val["mae"],
            **{f"test-{k}": v for k, v in fed_test.items()},
            **{f"{arm}-{split}-mae": alone[arm][split]["mae"]
               for arm in ("simple", "local") for split in ("val", "test")},
            "simple-lag": alone["simple"]["lag"],
            "filled-points": self.gaps.filled,
        }

    def alone(self, args: ModelArgs, train: TrainArgs, splits: Splits) -> dict:
        """Errors of the site's alone options (cached in alone.json): best simple forecast, local-only model."""
        path = self.state_dir / "alone.json"
        if path.exists():
            cached = json.loads(path.read_text())
            if cached["model_args"] == args.to_dict():
                return cached
        simple = best_simple(splits, args.lags)
        model, lr = self._local_only(args, train, splits)
        save_model(self.state_dir / "local_only.pt", model, {"lr": lr})
        result = {
            "model_args": args.to_dict(),
            "simple": {"lag": simple.lag, "val": simple.val, "test": simple.test},
            "local": {"val": evaluate(model, splits.val), "test": evaluate(model, splits.test), "lr": lr},
        }
        write_json(path, result)
        return result

    def _local_only(self, args: ModelArgs, train: TrainArgs, splits: Splits) -> tuple[Forecaster, float]:
        """Our architecture from random weights on this site alone; learning rate chosen on validation."""
        seed = round_seed(train.seed, self.name, 0)
        fits = []
        for lr in LOCAL_ONLY_LRS:
            torch.manual_seed(seed)
            model = Forecaster(args)
            fit = train_scratch(model, splits, _with_seed(train, seed, lr=lr))
            fits.append((fit.best_val_mae, lr, model))
        best_val, lr, model = min(fits, key=lambda f: (f[0], f[1]))
        return model, lr


def _with_seed(train: TrainArgs, seed: int, **changes) -> TrainArgs:
    return replace(train, seed=seed, **changes)
