"""Tests for shared.synthetic: the KernelSynth corpus and the multi-site demo data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shared.synthetic import (
    SEASONAL_PERIODS,
    _gp_draws,
    corpus_frame,
    demo_sites,
    exp_sine_squared,
    kernel_bank,
    kernel_synth,
)

DEMO = {"n_sites": 6, "length": 24 * 21, "series_per_site": (1, 3)}


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return demo_sites(seed=0, **DEMO)


def test_kernel_synth_shape_dtype_finite():
    corpus = kernel_synth(10, 64, seed=0)  # 10 is not a multiple of draws_per_kernel
    assert corpus.shape == (10, 64)
    assert corpus.dtype == np.float32
    assert np.isfinite(corpus).all()
    assert len(np.unique(corpus[:, 0])) == 10  # every series has its own level


def test_kernel_synth_is_deterministic_by_seed():
    a = kernel_synth(8, 48, seed=1, draws_per_kernel=1)
    np.testing.assert_array_equal(a, kernel_synth(8, 48, seed=1, draws_per_kernel=1))
    assert not np.array_equal(a, kernel_synth(8, 48, seed=2, draws_per_kernel=1))


def test_kernel_synth_spans_scales():
    spread = kernel_synth(40, 64, seed=0).std(axis=1)
    assert spread.max() / spread.min() > 10


@pytest.mark.parametrize("kernel, params", kernel_bank(64), ids=lambda v: getattr(v, "__name__", str(v)))
def test_bank_kernels_are_positive_semidefinite(kernel, params):
    t = np.linspace(0.0, 1.0, 64)
    cov = kernel(t, t, **params)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-8


@pytest.mark.parametrize("length_scale", [0.5, 2.0])
def test_periodic_kernel_is_periodic(length_scale):
    t, period = np.linspace(0.0, 1.0, 50), 0.13
    same = exp_sine_squared(t, t, period, length_scale)
    np.testing.assert_allclose(exp_sine_squared(t, t + period, period, length_scale), same, atol=1e-12)
    assert not np.allclose(exp_sine_squared(t, t + period / 2, period, length_scale), same)


def test_bank_periods_are_natural_seasons_in_points():
    length = 100
    periods = [params["period"] * (length - 1) for kernel, params in kernel_bank(length) if kernel is exp_sine_squared]
    np.testing.assert_allclose(sorted(periods), sorted(p for p in SEASONAL_PERIODS if p < length / 2))


def test_gp_draws_survive_a_singular_covariance():
    draws = _gp_draws(np.ones((50, 50)), 3, np.random.default_rng(0))  # rank one: needs jitter
    assert draws.shape == (3, 50)
    assert np.isfinite(draws).all()
    assert np.all(draws.std(axis=1) < 0.01 * np.abs(draws).mean(axis=1))  # constant series


def test_corpus_frame():
    values = kernel_synth(3, 20, seed=0)
    frame = corpus_frame(values, freq="h", start="2000-01-01")
    assert list(frame.columns) == ["unique_id", "ds", "y"]
    assert list(frame["unique_id"].unique()) == ["ks00000", "ks00001", "ks00002"]
    for _, series in frame.groupby("unique_id"):
        assert series["ds"].iloc[0] == pd.Timestamp("2000-01-01")
        assert (series["ds"].diff().dropna() == pd.Timedelta(hours=1)).all()
    np.testing.assert_array_equal(frame["y"].to_numpy().reshape(3, 20), values)


def test_demo_columns_sites_and_series(demo):
    assert list(demo.columns) == ["site", "unique_id", "ds", "y"]
    assert pd.api.types.is_datetime64_any_dtype(demo["ds"])
    assert np.isfinite(demo["y"]).all()
    assert sorted(demo["site"].unique()) == [f"site{i:02d}" for i in range(DEMO["n_sites"])]
    counts = demo.groupby("site")["unique_id"].nunique()
    assert counts.between(*DEMO["series_per_site"]).all()
    assert (demo["unique_id"].str.split("/").str[0] == demo["site"]).all()


def test_demo_fixed_series_count():
    frame = demo_sites(n_sites=3, length=48, seed=0, series_per_site=2)
    assert (frame.groupby("site")["unique_id"].nunique() == 2).all()


def test_demo_regular_hourly_grid(demo):
    assert not demo.duplicated(["unique_id", "ds"]).any()
    for _, series in demo.groupby("unique_id"):
        assert len(series) == DEMO["length"]
        assert (series["ds"].diff().dropna() == pd.Timedelta(hours=1)).all()


def test_demo_is_deterministic_by_seed(demo):
    pd.testing.assert_frame_equal(demo, demo_sites(seed=0, **DEMO))
    other = demo_sites(seed=1, **DEMO)
    assert len(other) != len(demo) or not np.allclose(other["y"], demo["y"])


def test_demo_sites_differ_in_level(demo):
    levels = demo.groupby("site")["y"].mean()
    assert levels.max() / levels.min() > 3
    assert (demo["y"] > 0).mean() > 0.95  # load-like: typically positive


def test_demo_sites_share_the_daily_shape(demo):
    profiles = demo.groupby(["site", demo["ds"].dt.hour])["y"].mean().unstack().to_numpy()
    profiles = (profiles - profiles.mean(axis=1, keepdims=True)) / profiles.std(axis=1, keepdims=True)
    corr = np.corrcoef(profiles)[np.triu_indices(len(profiles), k=1)]
    assert corr.mean() > 0.5
