"""Comparing two runs: Procrustes-aligned landscapes, matched averages, clusters.

The alignment itself is :func:`spicompute.landscape.embedding.procrustes_align` (the
pipeline's implementation, used here unchanged).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spicompute.landscape.embedding import procrustes_align

__all__ = ["procrustes_align", "align_landscapes", "cluster_correspondence"]


def align_landscapes(reference: pd.DataFrame, other: pd.DataFrame,
                     columns: list[str]) -> tuple[pd.DataFrame, float]:
    """Map ``other``'s ``columns`` onto ``reference``'s by a similarity transform.

    Rows are paired by ``average_id`` (both runs made the same averages, e.g.
    when only downstream params changed).  Returns a table with columns
    ``average_id``, ``<col>`` (reference), ``<col>_other`` (aligned other) and
    ``distance`` (between the matched points, reference units), plus the
    relative residual (0 identical shapes, ~1 unrelated).  ValueError when
    fewer than ``len(columns) + 1`` averages are shared.
    """
    common = np.intersect1d(reference["average_id"].to_numpy(), other["average_id"].to_numpy())
    if len(common) < len(columns) + 1:
        raise ValueError(f"only {len(common)} averages in common: the runs made different "
                         "averages (compare with `spicompute place` instead)")
    a = reference.set_index("average_id").loc[common, columns].to_numpy(np.float64)
    b = other.set_index("average_id").loc[common, columns].to_numpy(np.float64)
    aligned, _, _, rel = procrustes_align(a, b)
    out = pd.DataFrame({"average_id": common})
    for i, c in enumerate(columns):
        out[c] = a[:, i]
        out[f"{c}_other"] = aligned[:, i]
    out["distance"] = np.linalg.norm(a - aligned, axis=1)
    return out, float(rel)


def cluster_correspondence(reference: pd.DataFrame, other: pd.DataFrame,
                           column: str = "cluster") -> pd.DataFrame:
    """Which clusters correspond: contingency counts over shared averages.

    Rows: the reference's clusters; columns: the other's; plus ``best match``
    (the other cluster holding most of the row) and ``jaccard`` of that pair.
    """
    merged = reference[["average_id", column]].merge(other[["average_id", column]],
                                                     on="average_id", suffixes=("_a", "_b"))
    if merged.empty:
        return pd.DataFrame()
    counts = pd.crosstab(merged[f"{column}_a"], merged[f"{column}_b"])
    counts.index.name, counts.columns.name = "cluster (A)", "cluster (B)"
    best = counts.idxmax(axis=1)
    size_a = counts.sum(axis=1)
    size_b = counts.sum(axis=0)
    inter = np.array([counts.loc[i, best[i]] for i in counts.index])
    jac = inter / (size_a.to_numpy() + size_b.loc[best.to_numpy()].to_numpy() - inter)
    out = counts.copy()
    out.columns = [f"B:{c}" for c in counts.columns]
    out["best match"] = best.to_numpy()
    out["jaccard"] = np.round(jac, 3)
    return out.reset_index()
