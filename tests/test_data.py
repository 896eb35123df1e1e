"""Tests of shared.data: reading, validation, gap filling, seasons and window splits."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data import (
    DataError,
    Windows,
    check_lengths,
    make_splits,
    min_length,
    read_long,
    regularize,
    season_length,
    seasons,
    validate,
)

NN5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nn5" / "nn5_daily.csv.gz"


def long_frame(series: dict[str, list[float]], start="2024-01-01", freq="h", **extra) -> pd.DataFrame:
    """Long frame with one complete series per entry of series, plus constant extra columns."""
    rows = [
        {"unique_id": uid, "ds": ts, "y": y, **extra}
        for uid, ys in series.items()
        for ts, y in zip(pd.date_range(start, periods=len(ys), freq=freq), ys)
    ]
    return pd.DataFrame(rows)


def regular_frame(values, observed=None, uid="a", freq="h") -> pd.DataFrame:
    """A regularized frame of one series, built directly."""
    df = pd.DataFrame({
        "site": "s",
        "unique_id": uid,
        "ds": pd.date_range("2024-01-01", periods=len(values), freq=freq),
        "y": np.asarray(values, dtype=float),
        "observed": np.ones(len(values), bool) if observed is None else np.asarray(observed),
    })
    df.attrs["freq"] = freq
    return df


# reading and round trips


@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz", "data.parquet", "data.pq"])
def test_read_long_round_trip(tmp_path, name):
    # Prepare
    df = long_frame({"001": [1.0, 2.0, np.nan], "002": [4.0, 5.0, 6.0]}, site="north")
    path = tmp_path / name
    if name.endswith((".parquet", ".pq")):
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False)
    # Execute
    out = read_long(path)
    # Assert
    assert list(out.columns) == ["site", "unique_id", "ds", "y"]
    assert out["unique_id"].tolist() == ["001"] * 3 + ["002"] * 3  # leading zeros kept
    assert out["site"].unique().tolist() == ["north"]
    assert out["ds"].dtype == "datetime64[ns]"
    assert out["y"].dtype == "float64"
    np.testing.assert_array_equal(out["y"], [1, 2, np.nan, 4, 5, 6])
    assert out.attrs["freq"] == "h"


def test_read_long_unsupported_suffix(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("unique_id,ds,y\n")
    with pytest.raises(DataError, match=r"data\.txt.*unsupported"):
        read_long(path)


def test_read_long_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.csv"):
        read_long(tmp_path / "nothere.csv")


# validation


def test_validate_sorts_and_normalises():
    # Prepare: rows shuffled, integer ids, string timestamps
    df = long_frame({1: [1, 2, 3], 2: [4, 5, 6]}).sample(frac=1, random_state=0)
    df["ds"] = df["ds"].astype(str)
    # Execute
    out = validate(df, "f.csv")
    # Assert
    assert out["unique_id"].tolist() == ["1"] * 3 + ["2"] * 3
    assert out["site"].tolist() == out["unique_id"].tolist()  # no site column: each series its own site
    assert out["ds"].iloc[:3].is_monotonic_increasing and out.index.tolist() == list(range(6))
    assert out["y"].tolist() == [1, 2, 3, 4, 5, 6]
    assert df.columns.tolist() == ["unique_id", "ds", "y"]  # input untouched


def test_validate_custom_site_column():
    df = long_frame({"a": [1, 2, 3]}, region="east")
    out = validate(df, "f.csv", site_col="region")
    assert out["site"].tolist() == ["east"] * 3
    assert list(out.columns) == ["site", "unique_id", "ds", "y"]


def test_validate_site_col_none_ignores_site_column():
    df = long_frame({"a": [1, 2, 3]}, site="east")
    assert validate(df, "f.csv", site_col=None)["site"].tolist() == ["a"] * 3


def test_missing_custom_site_column():
    with pytest.raises(DataError, match=r"f\.csv.*'region'"):
        validate(long_frame({"a": [1, 2, 3]}), "f.csv", site_col="region")


def test_missing_columns():
    df = long_frame({"a": [1, 2, 3]}).rename(columns={"ds": "time"})
    with pytest.raises(DataError, match=r"f\.csv lacks column\(s\) \['ds'\].*'time'"):
        validate(df, "f.csv")


def test_non_numeric_y(tmp_path):
    # Prepare: a blank y is a missing value, 'abc' is an error
    path = tmp_path / "f.csv"
    path.write_text(
        "unique_id,ds,y\n"
        "A,2024-01-01 00:00,1\nA,2024-01-01 01:00,\nA,2024-01-01 02:00,3\n"
        "B,2024-01-01 00:00,1\nB,2024-01-01 01:00,abc\nB,2024-01-01 02:00,3\n"
    )
    # Execute / Assert
    with pytest.raises(DataError, match=r"'y' in .*f\.csv has values that are not finite numbers: 'abc' \(series B\)$"):
        read_long(path)


def test_ds_mixes_dates_and_datetimes():
    df = pd.DataFrame({"unique_id": "A", "ds": ["2024-01-01", "2024-01-01 01:00", "2024-01-01T02:00:00"], "y": 1.0})
    out = validate(df, "f.csv")
    assert out["ds"].tolist() == list(pd.date_range("2024-01-01", periods=3, freq="h"))
    assert out.attrs["freq"] == "h"


def test_time_zones_converted_to_utc(capsys):
    df = long_frame({"A": [1, 2, 3]})
    df["ds"] = df["ds"].dt.tz_localize("Europe/Paris")
    out = validate(df, "f.csv")
    assert out["ds"].tolist() == list(pd.date_range("2023-12-31 23:00", periods=3, freq="h"))
    assert "note: column 'ds' in f.csv has UTC offsets: its timestamps are converted to UTC" in capsys.readouterr().err


def test_unparseable_ds():
    df = long_frame({"A": [1, 2, 3], "B": [1, 2, 3]})
    df["ds"] = df["ds"].astype(str)
    df.loc[4, "ds"] = "not-a-date"
    with pytest.raises(DataError, match=r"'ds' in f\.csv has values that are not datetimes: 'not-a-date' \(series B\)"):
        validate(df, "f.csv")


def test_integer_ds_not_supported():
    df = pd.DataFrame({"unique_id": "A", "ds": [1, 2, 3], "y": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"'ds' in f\.csv is numeric.*integer time steps are not supported"):
        validate(df, "f.csv")


def test_duplicate_rows():
    df = long_frame({"A": [1, 2, 3]})
    df = pd.concat([df, df.iloc[[1]]])
    with pytest.raises(DataError, match=r"series A in f\.csv has duplicate rows at ds=2024-01-01 01:00"):
        validate(df, "f.csv")


def test_series_in_two_sites():
    df = long_frame({"A": [1, 2, 3]}, site="x")
    df.loc[2, "site"] = "y"
    with pytest.raises(DataError, match=r"series A in f\.csv is in several sites"):
        validate(df, "f.csv")


def test_infers_hourly_despite_missing_hour():
    df = long_frame({"A": [1, 2, 3, 4, 5]}).drop(index=2)
    assert validate(df, "f.csv").attrs["freq"] == "h"


def test_infers_weekly_and_monthly():
    weekly = long_frame({"A": [1, 2, 3, 4, 5]}, start="2024-01-07", freq="W").drop(index=2)  # gap
    monthly = long_frame({"A": [1, 2, 3, 4]}, freq="MS")
    assert validate(weekly, "f.csv").attrs["freq"] == "W-SUN"
    assert validate(monthly, "f.csv").attrs["freq"] == "MS"


def test_mixed_frequencies():
    df = pd.concat([long_frame({"A": [1, 2, 3]}), long_frame({"B": [1, 2, 3]}, freq="D")])
    with pytest.raises(DataError, match=r"series A \(h\) and B \(D\) in f\.csv have different frequencies"):
        validate(df, "f.csv")


@pytest.mark.parametrize("times", [
    ["00:00", "01:00", "02:00", "02:30", "03:10"],  # off the grid of its most common step
    ["00:00", "01:00"],  # too short
])
def test_cannot_infer_frequency(times):
    df = pd.DataFrame({"unique_id": "A", "ds": [f"2024-01-01 {t}" for t in times], "y": 1.0})
    with pytest.raises(DataError, match=r"cannot infer the frequency of series A in f\.csv \(pass freq=\.\.\.\)"):
        validate(df, "f.csv")


def test_given_freq():
    df = long_frame({"A": [1, 2]})  # too short to infer, fine when given
    assert validate(df, "f.csv", freq="H").attrs["freq"] == "h"
    with pytest.raises(DataError, match=r"series A in f\.csv has timestamp 2024-01-01 01:00:00 off the D grid"):
        validate(df, "f.csv", freq="D")
    with pytest.raises(DataError, match=r"'fortnightly' for f\.csv is not a pandas frequency"):
        validate(df, "f.csv", freq="fortnightly")


# regularize


def test_regularize_counts_and_fills_gaps():
    # Prepare: A misses 02:00 and has NaN at 04:00; B is NaN at both ends
    a = long_frame({"A": [1, 2, 999, 6, np.nan, 10]}).drop(index=2)
    b = long_frame({"B": [np.nan, 3, 5, np.nan]})
    df = validate(pd.concat([a, b]), "f.csv")
    # Execute
    out, report = regularize(df)
    # Assert
    assert list(out.columns) == ["site", "unique_id", "ds", "y", "observed"]
    np.testing.assert_array_equal(out["y"], [1, 2, 4, 6, 8, 10, 3, 3, 5, 5])
    assert out["observed"].tolist() == [True, True, False, True, False, True, False, True, True, False]
    assert out["ds"].iloc[2] == pd.Timestamp("2024-01-01 02:00")
    assert out["ds"].dtype == "datetime64[ns]"
    assert (report.missing_timestamps, report.missing_values, report.filled) == (1, 3, 4)
    assert report.per_series == {"A": 2, "B": 2}
    assert out.attrs["freq"] == "h"


def test_series_without_observations():
    with pytest.raises(DataError, match=r"^series B in f\.csv has no observed value of 'y'$"):
        validate(long_frame({"A": [1, 2, 3], "B": [np.nan] * 3}), "f.csv")
    df = validate(long_frame({"A": [1, 2, 3], "B": [1, np.nan, np.nan]}), "f.csv")
    df.loc[df["unique_id"] == "B", "y"] = np.nan  # e.g. a time slice of a validated frame
    with pytest.raises(DataError, match="series B has no observed value"):
        regularize(df)


def test_monthly_gap_needs_freq_and_fills_in_time():
    # Prepare: 2024-02 missing; 2024-01-01 is day 0, 2024-02-01 day 31, 2024-03-01 day 60
    df = pd.DataFrame({"unique_id": "A", "ds": ["2024-01-01", "2024-03-01", "2024-04-01", "2024-05-01"],
                       "y": [0.0, 60.0, 91.0, 121.0]})
    with pytest.raises(DataError, match=r"cannot infer the frequency of series A in f\.csv"):
        validate(df, "f.csv")
    # Execute
    out, report = regularize(validate(df, "f.csv", freq="MS"))
    # Assert: linear in time, not in position (which would give 30)
    assert out.attrs["freq"] == "MS" and report.missing_timestamps == 1
    assert out["y"].tolist() == [0, 31, 60, 91, 121]


# seasons


@pytest.mark.parametrize("freq, expected", [
    ("h", 24), ("H", 24), ("1h", 24), ("2h", 12), ("5h", 1), ("30min", 48), ("15min", 96),
    ("D", 7), ("B", 5), ("W", 52), ("W-MON", 52), ("MS", 12), ("ME", 12), ("M", 12), ("QS", 4), ("YS", 1),
])
def test_season_length(freq, expected):
    assert season_length(freq) == expected


def test_seasons():
    assert seasons("h") == [24, 168]
    assert seasons("15min") == [96, 672]
    assert seasons("D") == [7]
    assert seasons("MS") == [12]


# windows and splits


def test_make_splits_origins_and_contents():
    # Prepare: n=20, n_train = 20 - 4 - 4 = 12
    df = regular_frame(np.arange(20))
    # Execute
    splits = make_splits(df, lookback=4, horizon=2, val_size=4, test_size=4, stride=2)
    # Assert: train origins 4..10 step 1, val 12 and 14, test 16 and 18
    ds = df["ds"].to_numpy()
    np.testing.assert_array_equal(splits.train.origin, ds[4:11])
    np.testing.assert_array_equal(splits.val.origin, ds[[12, 14]])
    np.testing.assert_array_equal(splits.test.origin, ds[[16, 18]])
    np.testing.assert_array_equal(splits.train.x[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(splits.train.y[-1], [10, 11])
    np.testing.assert_array_equal(splits.val.x, [[8, 9, 10, 11], [10, 11, 12, 13]])
    np.testing.assert_array_equal(splits.val.y, [[12, 13], [14, 15]])
    np.testing.assert_array_equal(splits.test.x, [[12, 13, 14, 15], [14, 15, 16, 17]])
    np.testing.assert_array_equal(splits.test.y, [[16, 17], [18, 19]])
    assert splits.train.x.dtype == np.float32 and splits.train.mask.all()
    assert splits.test.series.tolist() == ["a", "a"]


def test_train_targets_stay_before_validation():
    df = regular_frame(np.arange(40.0))
    splits = make_splits(df, lookback=5, horizon=3, val_size=6, test_size=7)
    val_start, test_start = df["ds"].iloc[40 - 13], df["ds"].iloc[40 - 7]
    last_target = lambda w: w.origin + np.timedelta64(2, "h")  # noqa: E731
    assert last_target(splits.train).max() < val_start
    assert splits.val.origin.min() >= val_start and last_target(splits.val).max() < test_start
    assert splits.test.origin.min() >= test_start


def test_mask_propagation_and_unobserved_windows_dropped():
    # Prepare: points 12 and 13 (the whole first val target) and 17 unobserved
    observed = np.ones(20, bool)
    observed[[12, 13, 17]] = False
    df = regular_frame(np.arange(20), observed)
    # Execute
    splits = make_splits(df, lookback=4, horizon=2, val_size=4, test_size=4, stride=2)
    # Assert
    np.testing.assert_array_equal(splits.val.origin, df["ds"].to_numpy()[[14]])
    np.testing.assert_array_equal(splits.test.mask, [[True, False], [True, True]])
    np.testing.assert_array_equal(splits.val.x, [[10, 11, 12, 13]])  # filled history still used


def test_scale_seasonal_then_lag_one_then_nan():
    # Prepare: train region (first 4 points) of each series; season 2
    frames = [
        regular_frame([1, 2, 4, 8, 9, 9], uid="seasonal"),  # |4-1|, |8-2| -> 4.5
        regular_frame([1, 2, 4, 8, 9, 9], [True, True, True, False, True, True], uid="masked"),  # |4-1| -> 3
        regular_frame([1, 2, 1, 2, 9, 9], uid="lag1"),  # seasonal diffs 0 -> lag 1: 1
        regular_frame([5, 5, 5, 5, 9, 9], uid="flat"),  # all 0 -> NaN
    ]
    df = pd.concat(frames, ignore_index=True)
    df.attrs["freq"] = "h"
    # Execute
    train = make_splits(df, lookback=1, horizon=1, val_size=1, test_size=1, season=2).train
    # Assert
    scale = dict(zip(train.series, train.scale))
    assert scale["seasonal"] == 4.5 and scale["masked"] == 3.0 and scale["lag1"] == 1.0
    assert np.isnan(scale["flat"])


def test_too_short_series():
    df = pd.concat([regular_frame(np.arange(n), uid=f"s{n}") for n in (10, 11, 12, 13, 14, 15, 16, 20)])
    assert min_length(4, 2, 4, 4) == 14
    with pytest.raises(DataError, match=(
        r"^series s10 in f\.csv has 10 points, series s11 in f\.csv has 11 points, .*series s13 in f\.csv has 13 "
        r"points; needs at least 14 = lookback 4 \+ horizon 2 \+ validation 4 \+ test 4$"
    )):
        check_lengths(df, 4, 2, 4, 4, "f.csv")
    with pytest.raises(DataError, match=r"series s5 in data has 5 points, .* and 1 more; needs at least 14"):
        make_splits(pd.concat([regular_frame(np.arange(n), uid=f"s{n}") for n in range(5, 11)]), 4, 2, 4, 4)


def test_windows_concat_and_subset():
    w = make_splits(regular_frame(np.arange(20)), 4, 2, 4, 4, stride=2).test
    empty = Windows.concat([], lookback=4, horizon=2)
    assert len(empty) == 0 and empty.x.shape == (0, 4) and empty.mask.shape == (0, 2)
    both = Windows.concat([w, empty.subset(slice(0, 0)), w], 4, 2)
    assert len(both) == 4 and both.origin.dtype == "datetime64[ns]"
    np.testing.assert_array_equal(both.subset(np.array([False, True, False, False])).y, [[18, 19]])


# real data


@pytest.mark.skipif(not NN5.exists(), reason=f"{NN5} not present")
def test_nn5():
    df = read_long(NN5)
    out, report = regularize(df)
    assert df["unique_id"].nunique() == 111
    assert df.attrs["freq"] == "D"
    assert report.filled > 0 and not out["y"].isna().any()
