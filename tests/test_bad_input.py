"""Bad input is refused up front with one line naming the file, column or series: time-zone offsets, a torn
gzip file, series with no observation or too short for the windows, non-numeric values, corrupt state files."""

import gzip

import numpy as np
import pandas as pd
import pytest

from shared.data import DataError, check_lengths, read_long, regularize, validate

DAYS = pd.date_range("2024-01-01", periods=30, freq="D")


def test_daylight_saving_offsets_are_converted_to_utc(tmp_path, capsys):
    path = tmp_path / "dst.csv"
    path.write_text("unique_id,ds,y\n"
                    "a,2024-03-31 00:00:00+00:00,1\na,2024-03-31 01:00:00+00:00,2\n"
                    "a,2024-03-31 03:00:00+01:00,3\na,2024-03-31 04:00:00+01:00,4\n")
    out = read_long(path)
    assert out["ds"].tolist() == list(pd.date_range("2024-03-31", periods=4, freq="h"))  # no gap at the change
    assert out.attrs["freq"] == "h" and out["ds"].dt.tz is None
    assert f"column 'ds' in {path} has UTC offsets: its timestamps are converted to UTC" in capsys.readouterr().err


def test_offsets_mixed_with_naive_timestamps_are_refused():
    df = pd.DataFrame({"unique_id": ["a", "a", "b"], "y": 1.0,
                       "ds": ["2024-03-31 01:00:00+00:00", "2024-03-31 03:00:00+01:00", "2024-03-31 04:00:00"]})
    with pytest.raises(DataError, match=r"^column 'ds' in f\.csv mixes timestamps with and without a UTC offset "
                                        r"\(like '2024-03-31 01:00:00\+00:00'\); these have none: "
                                        r"'2024-03-31 04:00:00' \(series b\)$"):
        validate(df, "f.csv")


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_damaged_gzip_file_is_named(tmp_path, damage):
    blob = gzip.compress("".join(f"a,{d.date()},{i}\n" for i, d in enumerate(DAYS)).encode())
    path = tmp_path / "series.csv.gz"
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"plain text, not gzip")
    with pytest.raises(DataError, match=rf"^{path}: the file is truncated or not valid gzip \("):
        read_long(path)


def test_a_series_with_no_observed_value_is_refused():
    df = pd.DataFrame({"unique_id": ["a"] * 30 + ["b"] * 30, "ds": list(DAYS) * 2,
                       "y": [1.0] * 30 + [np.nan] * 30, "temp": [np.nan] * 30 + [2.0] * 30})
    with pytest.raises(DataError, match=r"^series b in f\.csv has no observed value of 'y'$"):
        validate(df, "f.csv")
    with pytest.raises(DataError, match=r"^series a in f\.csv has no observed value of 'temp'$"):
        validate(df.assign(y=1.0), "f.csv", covariates=("temp",))


def test_series_too_short_for_the_windows_are_named_before_anything_starts():
    df = pd.DataFrame({"unique_id": ["long"] * 30 + ["short"] * 5, "ds": [*DAYS, *DAYS[:5]], "y": 1.0})
    df = df.drop(index=[10, 11])  # a gap inside a series counts: regularize fills it
    frame = validate(df, "f.csv")
    with pytest.raises(DataError, match=r"^series short in f\.csv has 5 points; needs at least 14 = lookback 4 "
                                        r"\+ horizon 2 \+ validation 4 \+ test 4$"):
        check_lengths(frame, 4, 2, 4, 4, "f.csv")
    long = frame[frame["unique_id"] == "long"]
    check_lengths(long, 10, 2, 9, 9, "f.csv")  # 30 points on its grid, from 28 rows
    check_lengths(regularize(long)[0], 10, 2, 9, 9, "f.csv")
    with pytest.raises(DataError, match=r"^series long in f\.csv has 30 points; needs at least 31"):
        check_lengths(long, 10, 2, 9, 10, "f.csv")


@pytest.mark.parametrize("column", ["y", "temp"])
def test_boolean_values_are_refused(tmp_path, column):
    path = tmp_path / "f.csv"
    pd.DataFrame({"unique_id": "a", "ds": DAYS, "y": 1.5, "temp": 2.0}).assign(
        **{column: [True, False] * 15}).to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"^column '{column}' in {path} holds bool values, not numbers$"):
        read_long(path, covariates=("temp",))
    mixed = pd.DataFrame({"unique_id": "a", "ds": DAYS, "y": pd.Series([1.5, True] * 15, dtype=object)})
    with pytest.raises(DataError, match=r"^column 'y' in f\.csv has values that are not finite numbers: True "
                                        r"\(series a\), True \(series a\), True \(series a\) and 12 more$"):
        validate(mixed, "f.csv")
