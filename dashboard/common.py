"""Shared data access for the dashboard pages (read-only, cached).

The dashboard never recomputes heavy stages: it reads the files the pipeline
wrote.  Every loader takes the file's identity (path + mtime + size) as a
cache key, so a re-run of the pipeline shows up on the next page load.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import streamlit as st

ROOT = Path(os.environ.get("SPI_WORKSPACE", Path(__file__).resolve().parent.parent))


def workspace() -> Path:
    """Folder whose data/, results/ and metrics/ the dashboard shows."""
    return Path(os.environ.get("SPI_WORKSPACE", ROOT))


def path(relative: str) -> Path:
    return workspace() / relative


def file_key(p: Path) -> tuple:
    """Identity of a file for cache keys: (path, mtime_ns, size), or None if absent."""
    try:
        stat = p.stat()
    except FileNotFoundError:
        return (str(p), None, None)
    return (str(p), stat.st_mtime_ns, stat.st_size)


@st.cache_data(max_entries=32, show_spinner=False)
def _read_parquet(key: tuple) -> pd.DataFrame:
    return pd.read_parquet(key[0])


def read_table(relative: str) -> pd.DataFrame | None:
    """A Parquet table of the workspace, or None when the stage has not run."""
    p = path(relative)
    if not p.exists():
        return None
    return _read_parquet(file_key(p))


@st.cache_data(max_entries=32, show_spinner=False)
def _read_h5(key: tuple, datasets: tuple[str, ...], index: tuple | None) -> dict:
    out = {}
    with h5py.File(key[0], "r") as h5:
        for name in datasets:
            if name not in h5:
                continue
            ds = h5[name]
            if index is not None and ds.ndim > 0:
                out[name] = ds[np.asarray(index)]
            else:
                out[name] = ds[()]
        out["__attrs__"] = {name: dict(h5[name].attrs) for name in datasets if name in h5}
    return out


def read_h5(relative: str, datasets: list[str], index=None) -> dict | None:
    """Arrays from an HDF5 file of the workspace (optionally rows ``index``, sorted)."""
    p = path(relative)
    if not p.exists():
        return None
    idx = None if index is None else tuple(int(i) for i in np.sort(np.asarray(index)))
    return _read_h5(file_key(p), tuple(datasets), idx)


def missing(stage: str, output: str) -> None:
    """Friendly notice for a page whose stage has not produced its output yet."""
    st.info(f"No `{output}` yet — run `dvc repro {stage}` (or `make demo`).")


def averages_table(needs: str, part: str, extra_parts: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """The per-average table a page needs.

    ``results/averages.parquet`` when it has column ``needs`` (the ``tables``
    stage has run); otherwise ``results/parts/<part>.parquet`` left-joined with
    whichever ``extra_parts`` exist, so a page works as soon as its stage ran.
    None when the part itself is missing.
    """
    joined = read_table("results/averages.parquet")
    if joined is not None and needs in joined.columns:
        return joined
    table = read_table(f"results/parts/{part}.parquet")
    if table is None:
        return None
    for name in extra_parts:
        other = read_table(f"results/parts/{name}.parquet")
        if other is not None and "average_id" in other.columns:
            cols = ["average_id"] + [c for c in other.columns if c not in table.columns]
            table = table.merge(other[cols], on="average_id", how="left")
    return table


def log_image(images: np.ndarray, valid: np.ndarray, decades: float = 4.0) -> np.ndarray:
    """log10 of intensities for display, NaN where not observed.

    The floor is ``decades`` orders of magnitude below the 99.9th percentile of
    the observed values: EMC models carry values down to 1e-40 in unvisited
    corners, which would otherwise stretch the colour scale over 40 decades.
    """
    images = np.asarray(images, dtype=np.float64)
    observed = images[valid & (images > 0)]
    top = np.percentile(observed, 99.9) if observed.size else 1.0
    out = np.log10(np.maximum(images, top * 10.0**-decades))
    return np.where(valid, out, np.nan)
