"""Results tables (Parquet) and their assembly.

DVC lets exactly one stage produce a given file, yet several stages add
columns to the per-average table.  So each stage writes its own part,
``results/parts/<stage>.parquet`` (``average_id`` plus its columns), and the
``tables`` stage joins the parts into ``results/averages.parquet`` — the
table users and the dashboard read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spicompute.errors import InputError
from spicompute.io.provenance import atomic_path

KEY = "average_id"


def write_table(path: str | Path, table: pd.DataFrame) -> None:
    """Write a Parquet table atomically."""
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "table not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise InputError(path, None, f"not a readable Parquet table ({exc})") from exc


def merge_parts(base: pd.DataFrame, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Left-join part tables on ``average_id``; a column may come from one part only."""
    if KEY not in base.columns:
        raise ValueError(f"base table lacks {KEY}")
    out = base.copy()
    for part in parts:
        if KEY not in part.columns:
            raise ValueError(f"part table lacks {KEY}")
        clash = (set(part.columns) & set(out.columns)) - {KEY}
        if clash:
            raise ValueError(f"columns {sorted(clash)} appear in two parts")
        out = out.merge(part, on=KEY, how="left")
    return out
