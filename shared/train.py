"""Training and evaluation: linear_probe, fine_tune, body_update, train_shared, train_scratch, evaluate.

Plain PyTorch on `shared.data.Windows`; nothing here knows about Flower. Every fit stops early on
the validation MAE and restores the best weights, so no choice is made on test data.

References: Collins et al., "Exploiting Shared Representations for Personalized Federated
Learning" (FedRep), ICML 2021, for training the head before the shared body.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch.optim.adamw import adamw

from shared.baselines import seasonal_naive
from shared.config import TrainArgs
from shared.data import Splits, Windows
from shared.metrics import forecast_errors
from shared.model import Forecaster


def round_seed(seed: int, site: str, server_round: int) -> int:
    """A seed per (run seed, site, round), stable across processes (unlike hash())."""
    return zlib.crc32(f"{seed}/{site}/{server_round}".encode())


@dataclass
class FitResult:
    best_val_mae: float
    best_epoch: int  # 0 = the starting weights were never beaten
    epochs: int
    val_curve: list[float] = field(default_factory=list)
    returned_val_mae: float = float("nan")  # of the weights the fit leaves: the best, or the last with fixed epochs


def predict(model: Forecaster, x: np.ndarray, exog: np.ndarray | None = None, batch: int = 2048,
            head: bool = True) -> np.ndarray:
    """Forecasts [N, horizon] for raw windows x [N, lookback] (with their covariates exog
    [N, horizon + 1, C] when the model reads some), in eval mode; `head` False: the shared forecast."""
    model.eval()
    part = (lambda a, i: None if a is None else torch.from_numpy(a[i : i + batch]))
    with torch.no_grad():
        parts = [model(part(x, i), part(exog, i), head).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, model.args.horizon), np.float32)


def evaluate(model: Forecaster, windows: Windows) -> dict[str, float]:
    """MAE, RMSE, MASE and sMAPE of the model on `windows` (observed targets only)."""
    return forecast_errors(predict(model, windows.x, windows.exog), windows.y, windows.mask, windows.scale)


def _val_mae(model: Forecaster, val: Windows, head: bool = True) -> float:
    return forecast_errors(predict(model, val.x, val.exog, head=head), val.y, val.mask, val.scale)["mae"]


def _loss(model: Forecaster, x: torch.Tensor, exog: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
          head: bool = True) -> torch.Tensor:
    """Mean absolute error in each window's normalised units, over observed targets."""
    out, mean, std = model.forward_normalized(x, exog, head)
    err = (out - (y - mean) / std).abs() * mask
    return err.sum() / mask.sum().clamp_min(1)


class AdamW:
    """`torch.optim.AdamW` with its default options, as its functional form `torch.optim.adamw.adamw`
    over param groups `{"params", "lr"}`, without `torch.optim.Optimizer`: that class's methods import
    torch._dynamo on first use, about 1.2 s in every ClientApp process, and Flower starts one per message.
    """

    def __init__(self, groups: list[dict], weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.groups = [{"params": list(g["params"]), "lr": g["lr"]} for g in groups]
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for group in self.groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (moments and step count per parameter)."""
        for group in self.groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p not in self.state:
                    self.state[p] = (torch.zeros_like(p), torch.zeros_like(p), torch.tensor(0.0))
            avg, avg_sq, steps = zip(*(self.state[p] for p in params)) if params else ((), (), ())
            adamw(params, [p.grad for p in params], list(avg), list(avg_sq), [], list(steps), amsgrad=False,
                  beta1=self.betas[0], beta2=self.betas[1], lr=group["lr"], weight_decay=self.weight_decay,
                  eps=self.eps, maximize=False)


def fit(model: Forecaster, groups: list[dict], splits: Splits, args: TrainArgs,
        train_encoder: bool = True, epochs: int = 0, head: bool = True) -> FitResult:
    """Train the parameters in `groups` (AdamW param groups) with early stopping on val MAE.

    With `epochs`, train exactly that many and keep the last weights (the curve is still recorded).
    `head` False: the loss and validation MAE are the shared forecast's (the head is not used).
    """
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"cannot fit: {len(splits.train)} training and {len(splits.val)} validation windows")
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    opt = AdamW(groups, args.weight_decay)
    train = splits.train
    x, exog, y, mask = (torch.from_numpy(a) for a in (train.x, train.exog, train.y, train.mask.astype(np.float32)))
    best = FitResult(_val_mae(model, splits.val, head), 0, 0)
    best_state = copy.deepcopy(model.state_dict())
    best.val_curve.append(best.best_val_mae)
    order, cursor = torch.randperm(len(train), generator=gen), 0
    for epoch in range(1, (epochs or args.max_epochs) + 1):
        model.train()
        if not train_encoder:
            model.encoder.eval()  # frozen features: no dropout noise
        for _ in range(args.steps_per_epoch):
            if cursor >= len(order):
                order, cursor = torch.randperm(len(train), generator=gen), 0
            idx = order[cursor : cursor + args.batch_size]
            cursor += args.batch_size
            opt.zero_grad()
            _loss(model, x[idx], exog[idx], y[idx], mask[idx], head).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        val = _val_mae(model, splits.val, head)
        best.val_curve.append(val)
        best.epochs = epoch
        if val < best.best_val_mae:
            best.best_val_mae, best.best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif not epochs and epoch - best.best_epoch >= args.patience:
            break
    if not epochs:
        model.load_state_dict(best_state)
    best.returned_val_mae = best.val_curve[-1] if epochs else best.best_val_mae
    model.eval()
    return best


def anchor_head(model: Forecaster, windows: Windows, weight: float = 0.9, given: np.ndarray | None = None) -> str:
    """Start a fresh head from the best of the shared forecast and the simple ones (naive, seasonal
    naive) by MAE on `windows` (training windows: no validation data is used). `given`: one more
    forecast of `windows` in the running, for a head that mixes it after the simple ones.

    A simple forecast that beats the shared one gets `weight` in the head's mix (the site then starts
    from `weight` x it + (1 - weight) x the shared forecast) and the head learns a correction to that;
    otherwise, and with no windows at all (a new site), the head stays the identity. A model reading
    covariates also standardises them with their mean and std over these windows. Returns "shared",
    the lag's name, or "given".
    """
    if model.args.futr_exog and len(windows):
        if windows.exog.shape[2] != len(model.args.futr_exog):
            raise ValueError(f"the model reads covariates {list(model.args.futr_exog)}; the windows hold "
                             f"{windows.exog.shape[2]}")
        values = windows.exog.reshape(-1, windows.exog.shape[2]).astype(np.float64)
        with torch.no_grad():
            model.head.exog_mean.copy_(torch.from_numpy(values.mean(axis=0)))
            std = values.std(axis=0)
            model.head.exog_std.copy_(torch.from_numpy(np.where(std > 0, std, 1.0)))  # a constant column: unscaled
    mix = torch.zeros_like(model.head.mix)
    best = "shared"
    if len(windows):
        forecasts = {"shared": predict(model, windows.x, windows.exog, head=False)}  # first: it wins ties
        forecasts |= {f"lag {lag}": seasonal_naive(windows.x, model.args.horizon, lag) for lag in model.args.lags}
        if given is not None:
            forecasts["given"] = given
        errors = [forecast_errors(f, windows.y, windows.mask, windows.scale)["mae"] for f in forecasts.values()]
        index = int(np.argmin(errors))
        best = list(forecasts)[index]
        if index:
            mix[index - 1] = weight
    with torch.no_grad():
        model.head.mix.copy_(mix)
    return best


def _set_encoder_trainable(model: Forecaster, trainable: bool) -> None:
    for p in model.encoder.parameters():
        p.requires_grad_(trainable)


def linear_probe(model: Forecaster, splits: Splits, args: TrainArgs) -> FitResult:
    """Train the head and the encoder's known-ahead correction (it reads the covariates, not the
    transformer's features), the rest of the encoder frozen."""
    _set_encoder_trainable(model, False)
    direct = list(model.head.parameters())
    if model.encoder.known is not None:
        direct += list(model.encoder.known.requires_grad_(True).parameters())
    try:
        return fit(model, [{"params": direct, "lr": args.lr}], splits, args, train_encoder=False)
    finally:
        _set_encoder_trainable(model, True)


def fine_tune(model: Forecaster, splits: Splits, args: TrainArgs) -> tuple[FitResult, FitResult]:
    """Linear probe, then head and encoder together, the encoder at `lr * encoder_lr_ratio`."""
    probe = linear_probe(model, splits, args)
    groups = [
        {"params": model.head.parameters(), "lr": args.lr},
        {"params": model.encoder.parameters(), "lr": args.lr * args.encoder_lr_ratio},
    ]
    return probe, fit(model, groups, splits, args)


def body_update(model: Forecaster, splits: Splits, args: TrainArgs, epochs: int) -> FitResult:
    """A federated round's local update of the shared part (FedRep's body phase, FedAvg's local
    epochs): the encoder alone, on its own forecast's loss (the head is not used), at
    `lr * encoder_lr_ratio`, for exactly `epochs` passes over every training window, kept as they end."""
    passes = replace(args, steps_per_epoch=max(1, math.ceil(len(splits.train) / args.batch_size)))
    return fit(model, [{"params": model.encoder.parameters(), "lr": args.lr * args.encoder_lr_ratio}],
               splits, passes, epochs=epochs, head=False)


def train_shared(model: Forecaster, splits: Splits, args: TrainArgs) -> FitResult:
    """The encoder alone on its own forecast's loss at `lr`, early-stopped (pretraining, and the
    pooled model of every site's windows)."""
    return fit(model, [{"params": model.encoder.parameters(), "lr": args.lr}], splits, args, head=False)


def train_scratch(model: Forecaster, splits: Splits, args: TrainArgs, epochs: int = 0) -> FitResult:
    """Every parameter at the same learning rate (a local-only model, or pretraining)."""
    return fit(model, [{"params": model.parameters(), "lr": args.lr}], splits, args, epochs=epochs)
