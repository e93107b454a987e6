"""The per-average table of a run, joined from the stages' parts, and thinning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dashboard.data.loaders import OutputMissing, read_table

EMBEDDINGS = ("pc", "isomap", "spectral", "tsne")
MAX_POINTS = 20_000


def components(table: pd.DataFrame, method: str) -> list[str]:
    """Columns ``method_1, method_2, …`` present in ``table`` (in order)."""
    cols, k = [], 1
    while f"{method}_{k}" in table.columns:
        cols.append(f"{method}_{k}")
        k += 1
    return cols


def join_parts(base: pd.DataFrame, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Left-join parts on ``average_id``; a part's column already present is skipped."""
    out = base
    for part in parts:
        if "average_id" not in part.columns:
            continue
        cols = ["average_id"] + [c for c in part.columns if c not in out.columns]
        out = out.merge(part[cols], on="average_id", how="left")
    return out


def averages_table(root: str | Path, needs: str, part: str,
                   extra_parts: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per average with column ``needs``.

    ``results/averages.parquet`` when it has ``needs`` (the ``tables`` stage
    ran); otherwise ``results/parts/<part>.parquet`` joined with whichever
    ``extra_parts`` exist.  Raises OutputMissing when neither exists and
    OutputCorrupt when a file cannot be read.
    """
    root = Path(root)
    try:
        joined = read_table(root / "results" / "averages.parquet")
        if needs in joined.columns:
            return joined
    except OutputMissing:
        pass
    table = read_table(root / "results" / "parts" / f"{part}.parquet")
    extras = []
    for name in extra_parts:
        try:
            extras.append(read_table(root / "results" / "parts" / f"{name}.parquet"))
        except OutputMissing:
            continue
    return join_parts(table, extras)


def thin(table: pd.DataFrame, max_points: int = MAX_POINTS, seed: int = 0,
         keep_ids=()) -> tuple[pd.DataFrame, bool]:
    """At most ``max_points`` rows (a seeded uniform sample, original order kept).

    Rows whose ``average_id`` is in ``keep_ids`` (e.g. the selected point) are
    always kept.  Returns (table, thinned?).
    """
    n = len(table)
    if n <= max_points:
        return table, False
    rng = np.random.default_rng(seed)
    keep = np.zeros(n, bool)
    keep[rng.choice(n, size=max_points, replace=False)] = True
    if len(keep_ids) and "average_id" in table.columns:
        keep |= np.isin(table["average_id"].to_numpy(), list(keep_ids))
    return table[keep], True
