"""The forecaster: shapes, the encoder/head split, and what an untrained head forecasts."""

import pytest
import torch

from shared.model import EPS, Forecaster, ModelArgs, count_parameters, normalize, state_bytes

ARGS = ModelArgs(lookback=48, horizon=12, patch_len=12, patch_stride=6, d_model=16, n_heads=2,
                 n_layers=1, d_ff=32, lags=(1, 24))


def test_forward_shape_and_patch_count():
    model = Forecaster(ARGS)
    assert ARGS.n_patches == (48 - 12) // 6 + 1 == 7
    assert model(torch.randn(5, 48)).shape == (5, 12)


def test_state_is_exactly_encoder_plus_head():
    """Everything the model persists belongs to one of the two submodules: nothing falls between."""
    model = Forecaster(ARGS)
    keys = set(model.state_dict())
    enc = {f"encoder.{k}" for k in model.encoder.state_dict()}
    head = {f"head.{k}" for k in model.head.state_dict()}
    assert enc and head and not enc & head
    assert keys == enc | head
    assert count_parameters(model) == count_parameters(model.encoder) + count_parameters(model.head)


def test_an_untrained_head_serves_the_shared_forecast_and_its_mix_moves_to_the_simple_ones():
    torch.manual_seed(0)
    model = Forecaster(ARGS).eval()
    x = torch.arange(48, dtype=torch.float32).reshape(1, 48) ** 1.5
    shared = model(x, head=False)[0]
    torch.testing.assert_close(model(x)[0], shared)
    naive = x[0, -1].repeat(12)
    seasonal = x[0, 24:36]  # lag 24, horizon 12: the 12 points starting one season back
    with torch.no_grad():
        model.head.mix.copy_(torch.tensor([[0.25], [0.5]]).expand(2, 12))
    torch.testing.assert_close(model(x)[0], 0.25 * naive + 0.5 * seasonal + 0.25 * shared, rtol=1e-5, atol=1e-3)


def test_forecast_is_scale_equivariant():
    """Instance normalisation: scaling and shifting the input does the same to the forecast."""
    torch.manual_seed(0)
    model = Forecaster(ARGS).eval()
    torch.nn.init.normal_(model.head.correction.weight, std=0.1)
    x = torch.randn(3, 48)
    torch.testing.assert_close(model(100 * x + 7), 100 * model(x) + 7, rtol=1e-4, atol=1e-2)


def test_normalize_constant_window_stays_finite():
    z, mean, std = normalize(torch.full((1, 10), 3.0))
    assert torch.isfinite(z).all() and std.item() == pytest.approx(EPS)


def test_state_bytes_counts_float32():
    assert state_bytes({"a": torch.zeros(3, 4), "b": torch.zeros(5)}) == (12 + 5) * 4


@pytest.mark.parametrize("bad, match", [
    (dict(patch_len=60), "exceeds lookback"),
    (dict(d_model=15), "divisible"),
    (dict(lags=(1, 49)), "lags"),
])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelArgs(**{**ARGS.to_dict(), **bad})


def test_args_round_trip():
    assert ModelArgs.from_dict(ARGS.to_dict()) == ARGS


def test_a_mean_pooling_head_reads_one_token_wide_features():
    args = ModelArgs(**{**ARGS.to_dict(), "lags": ARGS.lags, "head_features": "mean"})
    model = Forecaster(args)
    assert model.head.correction.in_features == args.d_model
    x = torch.randn(5, args.lookback)
    assert model(x).shape == (5, args.horizon) and torch.isfinite(model(x)).all()
    with pytest.raises(ValueError, match="head_features"):
        ModelArgs(**{**ARGS.to_dict(), "lags": ARGS.lags, "head_features": "max"})
