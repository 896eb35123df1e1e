"""A site keeps its slice of the data file in its state folder: later messages load it instead of reading the
file, a changed file or setting reads the file again, a sealed cache needs the key, a damaged one is rebuilt."""

import os

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, RecordDict

import shared.sites
from client.app import open_site
from shared.checkpoint import read_file
from shared.config import DataArgs, Settings
from shared.data import DataError
from shared.sealing import SealError, generate_state_key, is_sealed
from shared.sites import CACHE_PREFIX, open_slice, read_sites
from tests.conftest import TINY

COVARIATES = ("temp",)


@pytest.fixture
def data(tmp_path) -> DataArgs:
    """A file of three sites (also named in a second column) with a covariate (a few values missing)."""
    frame = read_sites(DataArgs(demo_sites=3, demo_length=200))
    frame["region"] = frame["site"]
    frame["temp"] = np.where(np.arange(len(frame)) % 7 == 0, np.nan, np.arange(len(frame)) / 10)
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)
    return DataArgs(data_path=str(path))


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The data files read from now on."""
    read, seen = shared.sites.read_long, []
    monkeypatch.setattr(shared.sites, "read_long", lambda path, **kw: seen.append(path) or read(path, **kw))
    return seen


def _caches(folder):
    return sorted(folder.glob(f"{CACHE_PREFIX}*"))


def test_a_second_open_loads_the_cached_slice(data, tmp_path, reads):
    cold = open_slice(data, COVARIATES, tmp_path / "sites", per_site=True, index=1, expected_sites=3)
    warm = open_slice(data, COVARIATES, tmp_path / "sites", per_site=True, index=1, expected_sites=3)
    assert reads == [data.data_path]
    assert cold[0] == warm[0] == "site01" and cold[2] == warm[2] == tmp_path / "sites" / "site01"
    pd.testing.assert_frame_equal(warm[1], cold[1], check_exact=True)
    assert warm[1].attrs == cold[1].attrs == {"freq": "h"}
    assert list(warm[1].dtypes.astype(str)) == ["object", "object", "datetime64[ns]", "float64", "float64"]
    assert warm[1]["temp"].isna().any() and len(_caches(tmp_path / "sites" / "site01")) == 1
    assert [p.name for p in (tmp_path / "sites").iterdir()] == ["site01"]  # the other sites' folders are theirs


def test_changed_content_with_the_same_size_and_time_is_read_again(data, tmp_path, reads):
    path = tmp_path / "series.csv"
    _, before, folder = open_slice(data, COVARIATES, tmp_path / "state", name="site02")
    stat, text = path.stat(), path.read_text()
    line = next(line for line in text.splitlines() if line.startswith("site02,"))
    fields = line.split(",")  # site, unique_id, ds, y, ...
    y = fields[3] = ("1" if fields[3][0] != "1" else "2") + fields[3][1:]  # one digit: the size is unchanged
    path.write_text(text.replace(line, ",".join(fields)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    _, after, _ = open_slice(data, COVARIATES, tmp_path / "state", name="site02")
    assert reads == [data.data_path] * 2
    assert after["y"].iloc[0] == float(y) != before["y"].iloc[0] and after["y"].iloc[1:].equals(before["y"].iloc[1:])
    assert len(_caches(folder)) == 1  # the stale slice was replaced
    pd.testing.assert_frame_equal(open_slice(data, COVARIATES, tmp_path / "state", name="site02")[1], after)
    assert len(reads) == 2


@pytest.mark.parametrize("change", [{"freq": "h"}, {"covariates": ()}, {"site_column": "region"}])
def test_changed_settings_read_the_file_again(data, tmp_path, reads, change):
    covariates = change.pop("covariates", COVARIATES)
    open_slice(data, COVARIATES, tmp_path / "state", name="site00")
    changed = DataArgs(**{**data.__dict__, **change})
    _, frame, folder = open_slice(changed, covariates, tmp_path / "state", name="site00")
    assert reads == [data.data_path] * 2 and len(_caches(folder)) == 1
    assert list(frame.columns) == ["site", "unique_id", "ds", "y", *covariates]


def test_another_site_selection_is_another_slice(data, tmp_path, reads):
    for index in (0, 1, 0):
        name, frame, _ = open_slice(data, COVARIATES, tmp_path / "sites", per_site=True, index=index, expected_sites=3)
        assert name == f"site0{index}" and set(frame["site"]) == {name}
    assert len(reads) == 2


def test_a_sealed_cache_is_unreadable_without_the_key(data, tmp_path, reads):
    key = generate_state_key(tmp_path / "state.key")
    _, frame, folder = open_slice(data, COVARIATES, tmp_path / "state", key, name="site01")
    (cache,) = _caches(folder)
    blob, plain = cache.read_bytes(), read_file(cache, key)
    assert is_sealed(blob) and plain[:32] not in blob and plain[-32:] not in blob
    with pytest.raises(Exception):
        pd.read_parquet(cache)
    with pytest.raises(SealError, match=f"{cache}: sealed with a site's state key"):
        open_slice(data, COVARIATES, tmp_path / "state", name="site01")
    assert _caches(folder) == [cache]  # no plain copy of the data was left beside it
    pd.testing.assert_frame_equal(open_slice(data, COVARIATES, tmp_path / "state", key, name="site01")[1], frame)
    assert len(reads) == 2


@pytest.mark.parametrize("sealed", [False, True])
def test_a_damaged_cache_is_rebuilt_with_a_warning(data, tmp_path, reads, capsys, sealed):
    key = generate_state_key(tmp_path / "state.key") if sealed else None
    _, frame, folder = open_slice(data, COVARIATES, tmp_path / "state", key, name="site01")
    (cache,) = _caches(folder)
    blob = bytearray(cache.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    cache.write_bytes(bytes(blob[: len(blob) * 3 // 4]))
    _, rebuilt, _ = open_slice(data, COVARIATES, tmp_path / "state", key, name="site01")
    assert f"warning: {cache}: unreadable cache of the site's data" in capsys.readouterr().out
    pd.testing.assert_frame_equal(rebuilt, frame)
    assert _caches(folder) == [cache] and len(reads) == 2
    open_slice(data, COVARIATES, tmp_path / "state", key, name="site01")
    assert len(reads) == 2 and "warning" not in capsys.readouterr().out


def test_a_missing_data_file_is_named(tmp_path):
    with pytest.raises(DataError, match=f"cannot read {tmp_path / 'none.csv'}"):
        open_slice(DataArgs(data_path=str(tmp_path / "none.csv")), (), tmp_path / "state")


def test_the_demo_data_is_not_cached(tmp_path):
    name, frame, folder = open_slice(DataArgs(demo_sites=3, demo_length=200), (), tmp_path / "sites", per_site=True,
                                     index=2, expected_sites=3)
    assert name == "site02" and folder == tmp_path / "sites" / "site02" and not tmp_path.joinpath("sites").exists()


def test_a_deployed_site_opens_from_its_cache(data, tmp_path, reads):
    settings = Settings.from_config({**TINY, "futr-exog": "temp"})
    node = {"data-path": data.data_path, "state-dir": str(tmp_path / "state"), "site-name": "site02"}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    first, second = open_site(context, settings), open_site(context, settings)
    assert reads == [data.data_path] and first.name == second.name == "site02"
    assert first.state_dir == second.state_dir == tmp_path / "state"
    pd.testing.assert_frame_equal(first.frame, second.frame)
