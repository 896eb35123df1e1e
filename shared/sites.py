"""The data set of a run (the user's file or the built-in demo sites) and one site's slice of it."""

from __future__ import annotations

import pandas as pd

from shared.config import DataArgs
from shared.data import DataError, read_long, validate
from shared.synthetic import demo_sites


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
