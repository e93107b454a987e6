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
from spicompute.io.provenance import atomic_path, provenance

KEY = "average_id"


def write_table(path: str | Path, table: pd.DataFrame, *, stage: str = "",
                params: dict | None = None) -> None:
    """Write a Parquet table atomically, with provenance in its schema metadata.

    The keys of :func:`spicompute.io.provenance.provenance` are stored as
    Parquet key-value metadata (read them with ``read_provenance``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta.update({k.encode(): str(v).encode() for k, v in provenance(stage, params).items()})
    with atomic_path(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_provenance(path: str | Path) -> dict:
    """Provenance metadata (stage, version, params JSON, time) of a Parquet table."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"spicompute_")
            or k == b"created_utc"}


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "table not found")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise InputError(path, None, f"not a readable Parquet table ({exc})") from exc


def rows_for(path: str | Path, ids, columns) -> pd.DataFrame:
    """The rows of ``ids`` (average_id values, (M,)) of a table, columns ``columns``, in ``ids`` order.

    One-line InputErrors name the file and the missing column, or the averages without a row.
    """
    import numpy as np

    from spicompute.errors import InputError

    table = read_table(path)
    for col in ("average_id", *columns):
        if col not in table.columns:
            raise InputError(path, col, "column missing")
    table = table.set_index("average_id")
    missing = np.setdiff1d(ids, table.index.to_numpy())
    if missing.size:
        raise InputError(path, "average_id", f"{missing.size} averages have no row (e.g. {int(missing[0])})")
    return table.loc[ids, list(columns)]


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
