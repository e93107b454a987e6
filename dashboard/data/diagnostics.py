"""Diagnostics before trusting a landscape: do components follow nuisances?

Nuisance variables per average: occupancy (``n_frames``), the mean photon
count per frame of its member frames, and the bootstrap run it came from.
A CLPCA component that follows one of them more than anything shape-related
is suspect (the CC matrix then encodes signal level, not structure).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

THRESHOLD = 0.5


def mean_photons_per_average(frames: pd.DataFrame, frame_ids: np.ndarray,
                             photons: np.ndarray) -> pd.Series:
    """Mean photons per frame of each average's member frames.

    frames: results/frames.parquet (``frame_id``, ``average_id``);
    frame_ids, photons: (N,) from data/frames.h5 (``frames/frame_id``,
    ``frames/photons``).  Returns a Series indexed by average_id (photons).
    """
    lookup = pd.Series(np.asarray(photons, dtype=np.float64), index=np.asarray(frame_ids))
    counts = lookup.reindex(frames["frame_id"].to_numpy()).to_numpy()
    df = pd.DataFrame({"average_id": frames["average_id"].to_numpy(), "photons": counts})
    return df.groupby("average_id")["photons"].mean()


def correlation_ratio(values: np.ndarray, groups: np.ndarray) -> float:
    """eta in [0, 1]: how much of ``values``' variance the categorical ``groups`` explain."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    values, groups = values[ok], np.asarray(groups)[ok]
    total = ((values - values.mean()) ** 2).sum()
    if total == 0 or len(values) < 3:
        return float("nan")
    between = sum(((values[groups == g].mean() - values.mean()) ** 2) * (groups == g).sum()
                  for g in np.unique(groups))
    return float(np.sqrt(between / total))


def _rho(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def nuisance_correlations(table: pd.DataFrame, components: list[str],
                          photons: pd.Series | None = None,
                          shape_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per component: Spearman rho with ``n_frames`` and mean photons,
    eta with the bootstrap ``run``, the largest |rho| with any of
    ``shape_columns`` (shape-related references, e.g. ground truth or the
    orientation fit), and ``flag``: some nuisance has |value| > 0.5 and exceeds
    every shape reference.
    """
    rows = []
    ph = None if photons is None else photons.reindex(table["average_id"].to_numpy()).to_numpy()
    for c in components:
        x = table[c].to_numpy()
        row = {"component": c,
               "rho n_frames": _rho(x, table["n_frames"]) if "n_frames" in table else np.nan,
               "rho photons/frame": _rho(x, ph) if ph is not None else np.nan,
               "eta run": correlation_ratio(x, table["run"].to_numpy()) if "run" in table
               and table["run"].nunique() > 1 else np.nan}
        if "size_scale" in table:   # relative particle size from the fringe spacing: structure, not noise
            row["rho size scale"] = _rho(x, table["size_scale"])
        refs = [abs(_rho(x, table[s])) for s in shape_columns if s in table]
        refs = [r for r in refs if np.isfinite(r)]
        row["max |rho| shape"] = max(refs) if refs else np.nan
        nuis = {k: abs(row[k]) for k in ("rho n_frames", "rho photons/frame", "eta run")
                if np.isfinite(row[k])}
        worst = max(nuis, key=nuis.get) if nuis else None
        shape_best = row["max |rho| shape"] if refs else 0.0
        row["follows"] = worst.split(" ", 1)[1] if worst else ""
        row["flag"] = bool(worst and nuis[worst] > THRESHOLD and nuis[worst] > shape_best)
        rows.append(row)
    return pd.DataFrame(rows)


def size_axes(diag: pd.DataFrame, threshold: float = 0.8) -> list[str]:
    """Components that follow the averages' size scale with |rho| > ``threshold``: a size
    axis, not a shape axis (``ccmatrix.size_normalise: true`` compares shape at a common size)."""
    if "rho size scale" not in diag:
        return []
    return [r["component"] for _, r in diag.iterrows()
            if np.isfinite(r["rho size scale"]) and abs(r["rho size scale"]) > threshold]


def with_stability(diag: pd.DataFrame, stability: dict | None) -> pd.DataFrame:
    """Add the run-half reproducibility of each component (``metrics/embed.json`` →
    ``component_stability``, spicompute.landscape.stability) to the diagnostics.

    Columns ``stability`` (|r| between the component as recomputed on two disjoint
    halves of the bootstrap runs), ``null 95%`` (the same on shuffled, structureless
    CC matrices) and ``reproduced``.  Without the metric (older runs) the
    table is returned unchanged.
    """
    comps = (stability or {}).get("components") or {}
    if not comps or not len(diag):
        return diag
    out = diag.copy()
    get = lambda c, k: (comps.get(c) or {}).get(k)  # noqa: E731
    out["stability"] = [get(c, "stability") for c in out["component"]]
    out["null 95%"] = [get(c, "null_q95") for c in out["component"]]
    out["reproduced"] = [get(c, "reproduced") for c in out["component"]]
    out.attrs["split"] = stability.get("split", "runs")
    return out


def banner(diag: pd.DataFrame) -> str | None:
    """A one-line warning naming flagged and unreproduced components, or None."""
    parts = []
    bad = diag[diag["flag"]] if len(diag) else diag
    for _, r in bad.iterrows():
        key = {"n_frames": "rho n_frames", "photons/frame": "rho photons/frame",
               "run": "eta run"}[r["follows"]]
        parts.append(f"{r['component']} follows {r['follows']} ({key.split()[0]} = {r[key]:+.2f})")
    if "reproduced" in diag:
        halves = "run" if diag.attrs.get("split", "runs") == "runs" else "average"
        for _, r in diag[diag["reproduced"] == False].iterrows():  # noqa: E712 (None: not computed)
            parts.append(f"{r['component']} is not reproduced by disjoint {halves} halves "
                         f"(|r| {r['stability']:.2f}, null {r['null 95%']:.2f})")
    if not parts:
        return None
    return ("Check before trusting this landscape: " + "; ".join(parts)
            + ". A component that tracks occupancy, signal level or the bootstrap run more "
              "than structure, or that independent halves of the data do not reproduce, "
              "may be a nuisance or noise axis.")


def landscape_settings_note(cc_metrics: dict) -> str:
    """What the common lines were computed on: q range, size normalisation, denoising."""
    parts = []
    if cc_metrics.get("q_min_nm") is not None and cc_metrics.get("q_max_nm") is not None:
        parts.append(f"q {cc_metrics['q_min_nm']:.3f}–{cc_metrics['q_max_nm']:.3f} rad/nm")
    parts.append("averages at a common size (size_normalise)" if cc_metrics.get("size_normalise")
                 else "averages at their own size")
    sigma = float(cc_metrics.get("smooth_q_nm") or 0)
    parts.append(f"denoised by a Gaussian of {sigma:g} rad/nm (smooth_q_nm)" if sigma > 0 else "not denoised")
    return "Common lines: " + "; ".join(parts) + "."
