"""Loading pipeline outputs as arrays and tables, with clear errors.

Every reader takes a real file path and returns pandas/numpy values (files are
closed before returning).  A missing file raises :class:`OutputMissing`, an
unreadable one (truncated Parquet/HDF5, invalid JSON, missing dataset)
:class:`OutputCorrupt`; both carry a one-line message naming the file, which
the pages show instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd


class OutputError(Exception):
    """A pipeline output cannot be shown; ``str()`` is a one-line message."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputMissing(OutputError):
    """The output has not been produced (its stage has not run in this run)."""


class OutputCorrupt(OutputError):
    """The output exists but cannot be read (truncated, invalid, wrong layout)."""


def file_identity(path: str | Path) -> tuple:
    """(path, mtime_ns, size) of a file, (path, None, None) if absent: a cache key."""
    try:
        st = Path(path).stat()
    except (FileNotFoundError, NotADirectoryError):
        return (str(path), None, None)
    return (str(path), st.st_mtime_ns, st.st_size)


def _exists(path: Path) -> None:
    if not path.is_file():
        raise OutputMissing(path, "not produced yet")


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet table (optionally some ``columns``)."""
    path = Path(path)
    _exists(path)
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # pyarrow raises several types for a truncated file
        raise OutputCorrupt(path, f"unreadable Parquet ({exc.__class__.__name__})") from None


def read_json(path: str | Path) -> dict:
    """A JSON object (metrics files)."""
    path = Path(path)
    _exists(path)
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputCorrupt(path, f"invalid JSON ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict):
        raise OutputCorrupt(path, "expected a JSON object")
    return payload


def read_h5(path: str | Path, datasets: list[str] | tuple[str, ...], index=None,
            optional: tuple[str, ...] = ()) -> dict:
    """Arrays of an HDF5 file: ``{name: ndarray}`` plus ``"__attrs__"``.

    ``index`` (sequence of ints) reads only those rows of every dataset with
    ndim > 0, returned in the order given (duplicates allowed).  A dataset
    missing from the file raises OutputCorrupt unless listed in ``optional``.
    """
    path = Path(path)
    _exists(path)
    out: dict = {"__attrs__": {}}
    try:
        with h5py.File(path, "r") as h5:
            for name in datasets:
                if name not in h5:
                    if name in optional:
                        continue
                    raise OutputCorrupt(path, f"dataset {name!r} missing")
                ds = h5[name]
                if index is not None and ds.ndim > 0:
                    idx = np.asarray(index, dtype=np.int64)
                    uniq, inverse = np.unique(idx, return_inverse=True)
                    out[name] = ds[uniq][inverse] if len(uniq) else ds[:0]
                else:
                    out[name] = ds[()]
                out["__attrs__"][name] = dict(ds.attrs)
    except OutputError:
        raise
    except Exception as exc:  # OSError for truncated files, KeyError/ValueError for layout
        raise OutputCorrupt(path, f"unreadable HDF5 ({exc.__class__.__name__})") from None
    return out


def read_dvclive(folder: str | Path, pattern: str = "*.tsv", skip_partial: bool = False
                 ) -> dict[str, pd.DataFrame]:
    """dvclive scalar curves of ``<dir>/plots/metrics``: ``{name: DataFrame(step, name)}``.

    Each ``<name>.tsv`` (``pattern`` below ``folder``, recursively; ``name`` is its
    path without suffix) has columns ``step`` and ``<name>`` (dvclive also writes
    ``timestamp``).  A file without them raises OutputCorrupt, or is skipped with
    ``skip_partial`` (a log the stage is still writing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputMissing(folder, "not produced yet")
    out = {}
    for tsv in sorted(folder.rglob(pattern)):
        name = tsv.relative_to(folder).with_suffix("").as_posix()
        value = tsv.stem
        try:
            frame = pd.read_csv(tsv, sep="\t")
            if "step" not in frame.columns or value not in frame.columns:
                raise OutputCorrupt(tsv, f"expected columns step and {value}")
        except Exception as exc:
            if skip_partial:
                continue
            if isinstance(exc, OutputCorrupt):
                raise
            raise OutputCorrupt(tsv, f"unreadable TSV ({exc.__class__.__name__})") from None
        out[name] = frame[["step", value]].rename(columns={value: name})
    return out
