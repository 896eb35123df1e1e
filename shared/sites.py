"""The data set of a run (the user's file or the built-in demo sites) and one site's slice of it, kept in the
site's state folder so later messages need not read the file again."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.checkpoint import read_file, write_atomic
from shared.config import DataArgs, Settings, covariates, frequency_defaults, read_args
from shared.model import ModelArgs
from shared.data import DataError, Splits, check_lengths, make_splits, read_long, regularize, seasons, validate
from shared.sealing import SealError, is_sealed
from shared.synthetic import demo_sites

RECIPE = 1  # part of a slice cache's key: raise it when reading or validating changes what a slice holds
CACHE_PREFIX = "site-data-"  # a slice cache is CACHE_PREFIX + tag + ".parquet" in the site's state folder


def read_sites(data: DataArgs, covariates: tuple[str, ...] = ()) -> pd.DataFrame:
    """The whole long-format frame the sites are cut from (with these covariate columns): the user's
    file or the demo sites (which have none)."""
    if data.data_path:
        return read_long(data.data_path, site_col=data.site_column or None, freq=data.freq or None,
                         covariates=covariates)
    if covariates:
        raise DataError(f"the built-in demo data has no covariates {list(covariates)}; set data-path")
    frame = demo_sites(n_sites=data.demo_sites, length=data.demo_length, seed=data.demo_seed)
    return validate(frame, "built-in demo data", site_col="site", freq=data.freq or None)


@dataclass(frozen=True)
class RunPlan:
    """A command's data and run config, checked before anything starts."""

    frame: pd.DataFrame  # every site's series (shared.data.validate)
    defaults: dict  # the window and model settings that suit the data's frequency (frequency_defaults)
    config: dict  # the run config: data, those defaults, the command's choices, the user's overrides

    @property
    def sites(self) -> list[str]:
        return sorted(self.frame["site"].unique())


def plan_run(data_path: str, site_column: str, overrides: dict, chosen: dict | None = None,
             fixed: dict | None = None, whole_series: bool = True) -> RunPlan:
    """Read the data and build the run config; a ValueError (DataError) names the file, key or series.

    Later entries win: the data's frequency defaults, then `chosen` (the command's own settings), then
    the user's `overrides`, then `fixed` (what the command cannot let the user change). With
    `whole_series`, every series must be long enough for the windows (a backtest checks its slices).
    """
    base = {"data-path": str(Path(data_path).resolve()) if data_path else "", "site-column": site_column}
    frame = read_sites(read_args(DataArgs, base | (chosen or {}) | overrides), covariates(overrides))
    defaults = frequency_defaults(seasons(frame.attrs["freq"]))
    config = base | defaults | (chosen or {}) | overrides | (fixed or {})
    settings = Settings.checked(config)
    if whole_series:
        check_lengths(frame, settings.model.lookback, settings.model.horizon, settings.data.val_size,
                      settings.data.test_size, data_path or "built-in demo data")
    return RunPlan(frame, defaults, config)


def site_splits(frame: pd.DataFrame, data: DataArgs, args: ModelArgs) -> Splits:
    """A site's windows under these settings (its regularised frame: shared.data.regularize)."""
    return make_splits(frame, args.lookback, args.horizon, data.val_size, data.test_size, stride=data.stride,
                       covariates=args.futr_exog)


def sites_splits(frame: pd.DataFrame, data: DataArgs, args: ModelArgs) -> dict[str, Splits]:
    """Every site's windows in a run's frame, by site name."""
    out = {}
    for name, rows in frame.groupby("site", sort=True):
        rows = rows.reset_index(drop=True)
        rows.attrs = dict(frame.attrs)
        out[name] = site_splits(regularize(rows)[0], data, args)
    return out


def select_site(frame: pd.DataFrame, source: str, index: int | None = None, name: str | None = None,
                expected_sites: int | None = None) -> tuple[str, pd.DataFrame]:
    """One site's rows, by name or by position among the sorted site names."""
    names = sorted(frame["site"].unique())
    if expected_sites is not None and expected_sites != len(names):
        raise DataError(f"{source}: the federation has {expected_sites} sites but the data has {len(names)}")
    if name is not None:
        if name not in names:
            raise DataError(f"{source}: no site named '{name}' (sites: {names[:10]})")
    elif index is not None:
        if not 0 <= index < len(names):
            raise DataError(f"{source}: site index {index} out of range for {len(names)} sites")
        name = names[index]
    elif len(names) == 1:
        name = names[0]
    else:
        raise DataError(f"{source}: holds {len(names)} sites; say which one (site-name)")
    rows = frame[frame["site"] == name].reset_index(drop=True)
    rows.attrs = dict(frame.attrs)
    return name, rows


def open_slice(data: DataArgs, covariates: tuple[str, ...], state: str | Path, key: bytes | None = None,
               per_site: bool = False, index: int | None = None, name: str | None = None,
               expected_sites: int | None = None) -> tuple[str, pd.DataFrame, Path]:
    """One site's name, rows (select_site) and state folder, the rows cached in that folder.

    state: the site's state folder, or with per_site the folder holding one state folder per site name.
    key: the site's state key; the cache is sealed with it, and its file name is keyed by it too.
    The cache of a data file's slice is found by a tag over the file's bytes (sha256) and every setting
    that shapes the slice, so a changed file or setting reads the file again and replaces the cache.
    The demo data is not cached: it is generated in tens of milliseconds at its default size (8 sites), and
    from code, which no hash of a file would show changing.
    """
    state = Path(state)
    if not data.data_path:
        name, frame = select_site(read_sites(data, covariates), "built-in demo data", index, name, expected_sites)
        return name, frame, (state / name if per_site else state)
    try:
        with open(data.data_path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise DataError(f"cannot read {data.data_path}: {e}") from e
    shape = [RECIPE, digest, data.data_path, data.site_column, data.freq, list(covariates), index, name,
             expected_sites]
    file = f"{CACHE_PREFIX}{hmac.new(key or b'', json.dumps(shape).encode(), 'sha256').hexdigest()[:32]}.parquet"
    for path in (sorted(state.glob(f"*/{file}")) if per_site else [state / file]):
        if path.exists() and (frame := _cached(path, key, covariates)) is not None:
            return frame["site"].iloc[0], frame, path.parent
    name, frame = select_site(read_sites(data, covariates), data.data_path, index, name, expected_sites)
    folder = state / name if per_site else state
    _store(folder, file, frame, key)
    return name, frame, folder


def _cached(path: Path, key: bytes | None, covariates: tuple[str, ...]) -> pd.DataFrame | None:
    """The slice cached in `path`, or None after a warning naming it if it cannot be read. The cache is derived
    data, so a damaged one is read again from the data file rather than stopping the site."""
    try:
        frame = pd.read_parquet(io.BytesIO(read_file(path, key)))
        if list(frame.columns) != ["site", "unique_id", "ds", "y", *covariates] or frame.empty \
                or "freq" not in frame.attrs:
            raise ValueError("not a site's slice")
    except (ValueError, OSError) as e:  # SealError and pyarrow's errors are among these
        print(f"warning: {path}: unreadable cache of the site's data ({e}); reading the data file again", flush=True)
        return None
    return frame


def _store(folder: Path, file: str, frame: pd.DataFrame, key: bytes | None) -> None:
    """Write the slice as folder/file (sealed with `key`), then remove the folder's other slice caches.

    Without a key, a folder whose cache is sealed is refused: it would hold the site's data in plain."""
    older = [path for path in folder.glob(f"{CACHE_PREFIX}*.parquet") if path.name != file]
    for path in older:
        with open(path, "rb") as f:
            if key is None and is_sealed(f.read(32)):
                raise SealError(f"{path}: sealed with a site's state key; give that key to open this site "
                                "(the site's node config state-key)")
    write_atomic(folder / file, frame.to_parquet, key)
    for path in older:
        path.unlink(missing_ok=True)
