"""Training functions: they learn, they freeze what they say, they stop on validation, they repeat."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shared.data import make_splits, regularize, validate
from shared.model import Forecaster, ModelArgs
from shared.config import TrainArgs
from shared.train import AdamW, anchor_head, body_update, evaluate, fine_tune, linear_probe, train_scratch, train_shared

ARGS = ModelArgs(lookback=48, horizon=12, patch_len=12, patch_stride=12, d_model=16, n_heads=2, n_layers=1,
                 d_ff=32, lags=(1, 24))
FAST = TrainArgs(max_epochs=4, steps_per_epoch=10, batch_size=32, seed=0)


def _splits(seed=0, n=480):
    """A noisy daily cycle with a weekly bump: learnable, but not by a naive forecast."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + 2 * (t // 24 % 7 >= 5) + rng.normal(0, 0.3, n)
    frame = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=n, freq="h"), "y": y})
    regular, _ = regularize(validate(frame, "test"))
    return make_splits(regular, 48, 12, 48, 48, stride=12)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_linear_probe_changes_only_the_head():
    torch.manual_seed(0)
    model, splits = Forecaster(ARGS), _splits()
    encoder_before, head_before = _state(model.encoder), _state(model.head)
    result = linear_probe(model, splits, FAST)
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())
    assert result.best_val_mae < result.val_curve[0]  # it learned something
    assert all(p.requires_grad for p in model.encoder.parameters())  # unfrozen afterwards


def test_fine_tune_moves_the_encoder_and_improves_validation():
    torch.manual_seed(1)
    model, splits = Forecaster(ARGS), _splits()
    train_shared(model, splits, FAST)  # a pretrained encoder
    anchor_head(model, splits.train)  # as every site starts a head
    start = evaluate(model, splits.val)["mae"]
    before = _state(model.encoder)
    probe, tuned = fine_tune(model, splits, FAST)
    assert tuned.best_epoch > 0  # the joint phase improved on the probe, so the kept encoder is a new one
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items())
    assert tuned.best_val_mae < probe.best_val_mae < start


def test_early_stopping_restores_the_best_weights():
    torch.manual_seed(0)
    model, splits = Forecaster(ARGS), _splits()
    result = train_scratch(model, splits, TrainArgs(max_epochs=6, steps_per_epoch=5, batch_size=32, lr=0.05,
                                                    patience=1))
    assert result.best_val_mae == min(result.val_curve)
    assert evaluate(model, splits.val)["mae"] == result.best_val_mae == result.returned_val_mae


def test_fixed_epochs_keep_the_last_weights_even_when_validation_never_improves():
    torch.manual_seed(0)
    model, splits = Forecaster(ARGS), _splits()
    # a learning rate so high that early stopping would likely keep the start
    wild = TrainArgs(max_epochs=6, steps_per_epoch=5, batch_size=32, lr=5.0, patience=1)
    before = _state(model)
    result = train_scratch(model, splits, wild, epochs=3)
    assert result.epochs == 3 and len(result.val_curve) == 4  # no early stop
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert evaluate(model, splits.val)["mae"] == pytest.approx(result.val_curve[-1])
    assert result.returned_val_mae == result.val_curve[-1]


def test_body_update_moves_only_the_encoder_for_exactly_the_epochs_asked():
    torch.manual_seed(0)
    model, splits = Forecaster(ARGS), _splits()
    encoder_before, head_before = _state(model.encoder), _state(model.head)
    result = body_update(model, splits, FAST, epochs=2)
    assert result.epochs == 2 and len(result.val_curve) == 3
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert evaluate(model, splits.val)["mae"] == pytest.approx(result.val_curve[-1])  # the last weights
    assert all(p.requires_grad for p in model.head.parameters())  # unfrozen afterwards


def test_same_seed_same_weights():
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = Forecaster(ARGS)
        fine_tune(model, _splits(), FAST)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_anchor_head_starts_from_the_best_simple_forecast_on_training_windows():
    """On a clean daily cycle the 24-lag forecast is exact: a fresh head points at it with weight 0.9."""
    model = Forecaster(ARGS)  # lags (1, 24)
    splits = _splits()
    assert anchor_head(model, splits.train) == "lag 24"
    torch.testing.assert_close(model.head.mix, torch.stack([torch.zeros(12), torch.full((12,), 0.9)]))
    # the forecast is now 0.9 x seasonal naive + 0.1 x the shared forecast (the correction is still zero)
    x = torch.from_numpy(splits.val.x[:1])
    model.eval()
    expected = 0.9 * x[0, 24:36] + 0.1 * model(x, head=False)[0]
    torch.testing.assert_close(model(x)[0], expected, rtol=1e-4, atol=1e-3)


def test_a_head_with_nothing_to_learn_from_is_the_identity_on_the_shared_forecast():
    """A new site (no training window) and a site where the shared forecast wins both start from it."""
    torch.manual_seed(0)
    model, splits = Forecaster(ARGS).eval(), _splits()
    assert anchor_head(model, splits.train.subset(np.arange(0))) == "shared"
    x = torch.from_numpy(splits.val.x)
    torch.testing.assert_close(model(x), model(x, head=False))
    train_shared(model, splits, FAST)  # the shared forecast beats naive and seasonal naive on this series
    assert anchor_head(model, splits.train) == "shared"
    assert not model.head.mix.any()


def test_adamw_updates_exactly_as_torchs_adamw_with_groups_and_frozen_parameters():
    torch.manual_seed(0)
    ours, theirs = Forecaster(ARGS), Forecaster(ARGS)
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()  # no dropout: the same gradients in both
    start = _state(ours)
    moved = [f"encoder.{k}" for k, _ in ours.encoder.named_parameters()] + [f"head.{k}" for k, _ in ours.head.named_parameters()]
    ours.encoder.requires_grad_(False)  # no gradient: neither optimizer may touch them
    theirs.encoder.requires_grad_(False)
    x = torch.randn(16, ARGS.lookback)

    def groups(model):
        return [{"params": model.head.parameters(), "lr": 3e-3}, {"params": model.encoder.parameters(), "lr": 1e-3}]

    optimizers = [AdamW(groups(ours), 1e-4), torch.optim.AdamW(groups(theirs), weight_decay=1e-4)]
    for step in range(5):
        if step == 3:
            for model in (ours, theirs):
                model.encoder.requires_grad_(True)  # a group joining mid-way starts its own moments
        for model, opt in zip((ours, theirs), optimizers):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert all(not torch.equal(v, start[k]) for k, v in ours.state_dict().items() if k in moved)


def test_a_fit_does_not_import_torch_dynamo():
    """torch.optim.Optimizer's methods import torch._dynamo (about 1.2 s) in every fresh ClientApp process."""
    code = ("import sys; from tests.test_train import ARGS, FAST, _splits; from shared.model import Forecaster; "
            "from shared.train import fine_tune; fine_tune(Forecaster(ARGS), _splits(), FAST); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"
