"""Long-format series (unique_id, ds, y): reading, validation, gap filling and forecasting windows."""

from __future__ import annotations

import gzip
import re
import sys
import warnings
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from pandas.tseries.frequencies import to_offset

REQUIRED = ("unique_id", "ds", "y")


class DataError(ValueError):
    """Bad input; the message names the file, column or series."""


def read_table(path, text_columns: tuple[str | None, ...] = ("unique_id",)) -> pd.DataFrame:
    """Read a CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file as it is (text_columns as
    strings in a CSV)."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise DataError(f"{path}: unsupported file type (use .csv, .csv.gz, .parquet or .pq)")
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={col: str for col in text_columns if col})
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: the file is truncated or not valid gzip ({e})") from e
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e


def read_long(path, site_col: str | None = "site", freq: str | None = None,
              covariates: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a long-format CSV (.csv, .csv.gz) or Parquet (.parquet, .pq) file, then validate it."""
    return validate(read_table(path, ("unique_id", site_col)), str(Path(path)), site_col, freq, covariates)


def validate(df: pd.DataFrame, source: str, site_col: str | None = "site",
             freq: str | None = None, covariates: tuple[str, ...] = ()) -> pd.DataFrame:
    """Check and normalise a long frame into [site, unique_id, ds, y, *covariates] sorted, with attrs['freq'].

    source: file name used in error messages; site_col: column grouping series into sites (the
    default 'site' may be absent: each series is then its own site); freq: pandas frequency alias,
    inferred per series when None; covariates: numeric columns kept beside y (missing values allowed,
    but every series needs one observed value of y and of each covariate). Timestamps with a UTC
    offset (2024-03-31 03:00+01:00) are converted to UTC, so daylight saving changes leave no gap or
    repeat; a note on stderr says so.
    """
    missing = [col for col in (*REQUIRED, *covariates) if col not in df.columns]
    if missing:
        raise DataError(f"{source} lacks column(s) {missing}; it has {list(df.columns)}")
    if site_col and site_col not in df.columns and site_col != "site":
        raise DataError(f"{source} has no site column {site_col!r}; it has {list(df.columns)}")
    if df.empty:
        raise DataError(f"{source} has no rows")
    has_site = bool(site_col) and site_col in df.columns
    for col in ([site_col] if has_site else []) + ["unique_id"]:
        if df[col].isna().any():
            raise DataError(f"column {col!r} in {source} has empty values")
    df = df.reset_index(drop=True)
    uid = df["unique_id"].astype(str)
    frame = pd.DataFrame({
        "site": df[site_col].astype(str) if has_site else uid,
        "unique_id": uid,
        "ds": _parse_ds(df, source),
        "y": _parse_y(df, source),
        **{col: _parse_y(df, source, col) for col in covariates},
    }).sort_values(["site", "unique_id", "ds"], kind="stable").reset_index(drop=True)

    for col in ("y", *covariates):
        counts = frame.groupby("unique_id", sort=False)[col].count()
        empty = counts.index[counts == 0]
        if len(empty):
            more = f" (and {len(empty) - 1} more series)" if len(empty) > 1 else ""
            raise DataError(f"series {empty[0]} in {source} has no observed value of {col!r}{more}")
    dup = frame.duplicated(["unique_id", "ds"])
    if dup.any():
        row = frame[dup].iloc[0]
        raise DataError(f"series {row.unique_id} in {source} has duplicate rows at ds={row.ds}")
    sites = frame.groupby("unique_id", sort=False)["site"].unique()
    shared = sites[sites.map(len) > 1]
    if len(shared):
        raise DataError(f"series {shared.index[0]} in {source} is in several sites: {list(shared.iloc[0])}")
    frame.attrs["freq"] = _frequency(frame, source, freq)
    return frame


def _parse_y(df: pd.DataFrame, source: str, col: str = "y") -> np.ndarray:
    """Column col as float64; NaN and blank cells are missing values, anything else non-numeric (text,
    booleans, datetimes) is an error."""
    raw = df[col]
    numeric = pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw)
    if not numeric and not (pd.api.types.is_object_dtype(raw) or pd.api.types.is_string_dtype(raw)):
        raise DataError(f"column {col!r} in {source} holds {raw.dtype} values, not numbers")
    y = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    missing = raw.isna().to_numpy()
    if not numeric:
        missing |= raw.astype(str).str.strip().eq("").to_numpy()
        y[raw.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(bool)] = np.nan  # to_numeric takes True as 1
    _raise_bad(df, ~missing & ~np.isfinite(y), col, source, "has values that are not finite numbers")
    return y


def _parse_ds(df: pd.DataFrame, source: str) -> pd.Series:
    """Column ds as naive datetime64[ns]: datetime dtypes or strings (ISO 8601, else one inferred format).

    Timestamps with a UTC offset or time zone are converted to UTC; a column mixing them with naive ones
    is an error (which time zone the naive ones are in is unknown).
    """
    raw = df["ds"]
    if pd.api.types.is_numeric_dtype(raw):
        raise DataError(f"column 'ds' in {source} is numeric ({raw.dtype}): integer time steps are not "
                        "supported, use dates or datetimes such as 2024-01-31 13:00")
    aware = raw.astype(str).str.strip().str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$").to_numpy(bool)
    known = raw.notna().to_numpy()
    if aware.any():
        _raise_bad(df, known & ~aware, "ds", source, "mixes timestamps with and without a UTC offset "
                   f"(like {raw[aware].iloc[0]!r}); these have none")
    try:
        ds = pd.to_datetime(raw, errors="coerce", format="ISO8601", utc=aware.any())
        if (ds.isna() & raw.notna()).any():  # not all ISO 8601: let pandas guess a format for the rest
            ds = ds.fillna(pd.to_datetime(raw, errors="coerce", utc=aware.any()))
    except (ValueError, TypeError) as e:
        raise DataError(f"column 'ds' in {source} cannot be parsed as datetimes: {e}") from e
    _raise_bad(df, ds.isna().to_numpy(), "ds", source, "has values that are not datetimes")
    if ds.dt.tz is not None:
        print(f"note: column 'ds' in {source} has UTC offsets: its timestamps are converted to UTC", file=sys.stderr)
        ds = ds.dt.tz_convert("UTC").dt.tz_localize(None)
    return ds.astype("datetime64[ns]")


def _raise_bad(df: pd.DataFrame, bad: np.ndarray, col: str, source: str, problem: str) -> None:
    """Raise a DataError showing a few offending values of col and their series."""
    if bad.any():
        rows = df.loc[bad, [col, "unique_id"]]
        shown = ", ".join(f"{v!r} (series {u})" for v, u in rows.head(3).itertuples(index=False))
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        raise DataError(f"column {col!r} in {source} {problem}: {shown}{more}")


def _offset(freq):
    """pandas offset of a frequency alias, also accepting aliases pandas 3 dropped (H, T, S, M, Q, Y, A)."""
    legacy = {"H": "h", "T": "min", "S": "s", "M": "ME", "Q": "QE", "Y": "YE", "A": "YE"}
    match = re.fullmatch(r"(\d*)([A-Z]+)(-\w+)?", str(freq).strip())
    if match and match[2] in legacy:
        freq = f"{match[1]}{legacy[match[2]]}{match[3] or ''}"
    return to_offset(freq)


def _off_grid(ds: pd.DatetimeIndex, offset) -> pd.DatetimeIndex:
    """Timestamps of a sorted series not on the grid first..last at offset."""
    return ds[~ds.isin(pd.date_range(ds[0], ds[-1], freq=offset))]


def _infer_freq(ds: pd.DatetimeIndex):
    """Offset of a sorted series: pd.infer_freq, else its most common step if all points lie on that grid."""
    if len(ds) < 3:
        return None
    with warnings.catch_warnings(action="ignore", category=DeprecationWarning):  # str -> offset in pandas 4
        inferred = pd.infer_freq(ds)
    if inferred is not None:
        return to_offset(inferred)
    steps, counts = np.unique(np.diff(ds.asi8), return_counts=True)
    step = pd.Timedelta(int(steps[counts.argmax()]), unit="ns")
    if step == pd.Timedelta(weeks=1):
        offset = to_offset(f"W-{ds[0].day_name()[:3].upper()}")
    elif step % pd.Timedelta(days=1) == pd.Timedelta(0):
        offset = to_offset(f"{step.days}D")
    else:
        offset = to_offset(step)
    return offset if _off_grid(ds, offset).empty else None


def _frequency(frame: pd.DataFrame, source: str, freq: str | None) -> str:
    """Canonical alias shared by all series: freq checked against every series, or inferred per series."""
    ds, groups = frame["ds"].to_numpy(), frame.groupby("unique_id", sort=False).indices
    series = [(uid, pd.DatetimeIndex(ds[rows])) for uid, rows in groups.items()]
    if freq is not None:
        try:
            offset = _offset(freq)
        except ValueError as e:
            raise DataError(f"freq {freq!r} for {source} is not a pandas frequency alias") from e
        for uid, index in series:
            off = _off_grid(index, offset)
            if len(off):
                raise DataError(f"series {uid} in {source} has timestamp {off[0]} off the {offset.freqstr} grid")
        return offset.freqstr
    found = {}  # alias -> first series with it
    for uid, index in series:
        offset = _infer_freq(index)
        if offset is None:
            raise DataError(f"cannot infer the frequency of series {uid} in {source} (pass freq=...)")
        found.setdefault(offset.freqstr, uid)
        if len(found) > 1:
            (freq_a, uid_a), (freq_b, uid_b) = found.items()
            raise DataError(f"series {uid_a} ({freq_a}) and {uid_b} ({freq_b}) in {source} "
                            "have different frequencies")
    return next(iter(found))


def _freq(df: pd.DataFrame) -> str:
    """The frequency alias validate() stored in df.attrs."""
    if "freq" not in df.attrs:
        raise DataError("frame has no attrs['freq']: pass it through validate() first")
    return df.attrs["freq"]


@dataclass(frozen=True)
class GapReport:
    """Gaps filled by regularize()."""

    missing_timestamps: int  # timestamps absent from a series' regular grid (between its first and last)
    missing_values: int  # rows present with y NaN
    per_series: dict[str, int]  # unique_id -> filled points (only series with some)

    @property
    def filled(self) -> int:
        return self.missing_timestamps + self.missing_values


def regularize(df: pd.DataFrame) -> tuple[pd.DataFrame, GapReport]:
    """Put every series of a validated frame on its full grid (first..last at attrs['freq']) and fill gaps.

    Fill rule: linear interpolation in time inside the series, then the nearest observed value at
    its two ends; covariate columns (any beyond [site, unique_id, ds, y]) are filled the same way.
    Returns [site, unique_id, ds, y, *covariates, observed] (observed False where y was filled) and
    the gap counts of y.
    """
    freq = _freq(df)
    site, ds, y = df["site"].to_numpy(), df["ds"].to_numpy("datetime64[ns]"), df["y"].to_numpy("float64")
    covariates = [col for col in df.columns if col not in ("site", "unique_id", "ds", "y", "observed")]
    sites, uids, grids, observed, per_series = [], [], [], [], {}
    values = {col: [] for col in ("y", *covariates)}
    for uid, rows in df.groupby("unique_id", sort=False).indices.items():
        ok = rows[~np.isnan(y[rows])]
        if not len(ok):
            raise DataError(f"series {uid} has no observed value of y")
        grid = pd.date_range(ds[rows[0]], ds[rows[-1]], freq=freq).to_numpy("datetime64[ns]")
        seen = np.isin(grid, ds[ok])
        if not seen.all():
            per_series[uid] = int((~seen).sum())
        sites.append(site[rows[0]])
        uids.append(uid)
        grids.append(grid)
        for col in values:
            v = df[col].to_numpy("float64")[rows]
            known = rows[~np.isnan(v)]
            if not len(known):
                raise DataError(f"series {uid} has no observed value of {col}")
            values[col].append(np.interp(grid.view("int64"), ds[known].view("int64"), v[~np.isnan(v)]))
        observed.append(seen)
    sizes = [len(grid) for grid in grids]
    out = pd.DataFrame({
        "site": np.repeat(sites, sizes),
        "unique_id": np.repeat(uids, sizes),
        "ds": np.concatenate(grids),
        **{col: np.concatenate(parts) for col, parts in values.items()},
        "observed": np.concatenate(observed),
    })
    out.attrs["freq"] = freq
    missing_timestamps, missing_values = len(out) - len(df), int(np.isnan(y).sum())
    return out, GapReport(missing_timestamps, missing_values, per_series)


def season_length(freq: str) -> int:
    """Main seasonal period of a frequency alias ('h', 'H', '1h', '15min', 'D', 'W', 'MS', ...).

    Sub-daily: points per day (h 24, 30min 48, 15min 96; 1 if the step does not divide a day).
    D 7, B 5, W 52, M 12, Q 4, Y 1, divided by the alias' multiple when it divides (2W -> 26), else 1.
    """
    offset = _offset(freq)
    base = offset.rule_code.split("-")[0]
    if isinstance(offset, pd.offsets.Tick) and base != "D":  # Day is a Tick before pandas 3
        per_day = pd.Timedelta(days=1) / pd.Timedelta(offset)
        return int(per_day) if per_day == int(per_day) else 1
    period = {"B": 5, "D": 7, "W": 52, "M": 12, "Q": 4, "Y": 1}.get(base.rstrip("SE"), 1)
    return period // offset.n if period % offset.n == 0 else 1


def seasons(freq: str) -> list[int]:
    """Natural seasons: daily and weekly for hourly, 30min and 15min data, else [season_length]."""
    season = season_length(freq)
    return [season, 7 * season] if season in (24, 48, 96) else [season]


@dataclass(frozen=True)
class Windows:
    """Forecasting windows of one site."""

    x: np.ndarray  # [N, lookback] float32, filled values
    y: np.ndarray  # [N, horizon] float32, filled values
    mask: np.ndarray  # [N, horizon] bool, True where the target was observed
    scale: np.ndarray  # [N] float64, MASE scale of the window's series (NaN when undefined)
    series: np.ndarray  # [N] object, unique_id of each window
    origin: np.ndarray  # [N] datetime64[ns], timestamp of the first target point
    exog: np.ndarray | None = None  # [N, horizon + 1, C] float32, covariates at the last input point and
    # over the horizon (None: [N, horizon + 1, 0])

    def __post_init__(self) -> None:
        if self.exog is None:
            object.__setattr__(self, "exog", np.zeros((len(self.x), self.y.shape[1] + 1, 0), np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, idx) -> Windows:
        """Windows selected by an index array or boolean mask."""
        return Windows(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Windows], lookback: int, horizon: int) -> Windows:
        """All windows of parts in order; empty parts (or none) give arrays of the right shapes."""
        n_exog = parts[0].exog.shape[2] if parts else 0
        empty = Windows(np.empty((0, lookback), np.float32), np.empty((0, horizon), np.float32),
                        np.empty((0, horizon), bool), np.empty(0), np.empty(0, object),
                        np.empty(0, "datetime64[ns]"), np.empty((0, horizon + 1, n_exog), np.float32))
        parts = [empty] + [p for p in parts if len(p)]
        return Windows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Windows)})


@dataclass(frozen=True)
class Splits:
    """Train, validation and test windows, split by time within each series."""

    train: Windows
    val: Windows
    test: Windows


def min_length(lookback: int, horizon: int, val_size: int, test_size: int) -> int:
    """Fewest points a series needs for one window in each split."""
    return lookback + horizon + val_size + test_size


def check_lengths(df: pd.DataFrame, lookback: int, horizon: int, val_size: int, test_size: int,
                  source: str) -> None:
    """Raise a DataError naming the series of a validated (or regularized) frame too short for make_splits.

    A series' length is its points on its regular grid, first to last timestamp, gaps included (as
    regularize fills them), so a command can check its data before anything starts.
    """
    need = min_length(lookback, horizon, val_size, test_size)
    offset = _offset(_freq(df))
    ends = df.groupby("unique_id", sort=False)["ds"].agg(["min", "max"])
    sizes = pd.Series([len(pd.date_range(a, b, freq=offset)) for a, b in ends.itertuples(index=False)], ends.index)
    short = sizes[sizes < need]
    if len(short):
        named = ", ".join(f"series {uid} in {source} has {n} points" for uid, n in short.head(5).items())
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DataError(f"{named}{more}; needs at least {need} = lookback {lookback} + horizon {horizon}"
                        f" + validation {val_size} + test {test_size}")


def make_splits(df: pd.DataFrame, lookback: int, horizon: int, val_size: int, test_size: int,
                stride: int = 1, season: int | None = None, covariates: tuple[str, ...] = (),
                joining: bool = False) -> Splits:
    """Windows of a regularized frame, split by time per series (all series pooled).

    The last test_size points of each series are the test region, the val_size before them the
    validation region, the rest the training region. Train origins (first target index) step by 1,
    validation and test origins by stride, from the start of their region; targets stay inside
    their region, inputs may look back into earlier ones. Windows with no observed target are
    dropped. scale is the series' mean |y_t - y_(t-season)| over observed pairs of the training
    region (season defaults to season_length(freq)), else the same at lag 1, else NaN. exog holds
    the `covariates` columns at the last input point and over each window's horizon. `joining`: a
    site with little history, which needs only a lookback before validation (no training window).
    """
    if min(lookback, horizon, stride) < 1 or min(val_size, test_size) < 0:
        raise DataError(f"bad window sizes: lookback {lookback}, horizon {horizon}, stride {stride}, "
                        f"validation {val_size}, test {test_size}")
    if "observed" not in df.columns:
        raise DataError("make_splits needs a regularized frame (run regularize first)")
    check_lengths(df, lookback, 0 if joining else horizon, val_size, test_size, "data")
    missing = [col for col in covariates if col not in df.columns]
    if missing:
        raise DataError(f"the data has no covariate column(s) {missing}; it has {list(df.columns)}")
    exog = df[list(covariates)].to_numpy("float32").reshape(len(df), len(covariates))
    season = season or season_length(_freq(df))
    values, seen = df["y"].to_numpy("float64"), df["observed"].to_numpy(bool)
    ds = df["ds"].to_numpy("datetime64[ns]")
    parts = {"train": [], "val": [], "test": []}
    for uid, rows in df.groupby("unique_id", sort=False).indices.items():
        y, ok, n = values[rows], seen[rows], len(rows)
        n_train = n - val_size - test_size
        scale = _mase_scale(y[:n_train], ok[:n_train], season)
        regions = {"train": (lookback, n_train, 1), "val": (n_train, n_train + val_size, stride),
                   "test": (n_train + val_size, n, stride)}  # first origin, region end, step
        for name, (first, end, step) in regions.items():
            t = np.arange(first, end - horizon + 1, step)
            t = t[sliding_window_view(ok, horizon)[t].any(axis=1)]  # drop windows with no observed target
            parts[name].append(Windows(
                x=sliding_window_view(y, lookback)[t - lookback].astype(np.float32),
                y=sliding_window_view(y, horizon)[t].astype(np.float32),
                mask=sliding_window_view(ok, horizon)[t],
                scale=np.full(len(t), scale),
                series=np.full(len(t), uid, dtype=object),
                origin=ds[rows[t]],
                exog=sliding_window_view(exog[rows], horizon + 1, axis=0)[t - 1].transpose(0, 2, 1).copy(),
            ))
    return Splits(*(Windows.concat(parts[name], lookback, horizon) for name in ("train", "val", "test")))


def _mase_scale(values: np.ndarray, observed: np.ndarray, season: int) -> float:
    """Mean absolute seasonal difference over observed pairs; lag 1 if that is 0 or undefined; else NaN."""
    for lag in (season, 1):
        both = observed[lag:] & observed[:-lag]
        if both.any():
            scale = np.abs(values[lag:] - values[:-lag])[both].mean()
            if scale > 0:
                return float(scale)
    return float("nan")
