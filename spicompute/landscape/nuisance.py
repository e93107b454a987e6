"""Nuisance variables of the averages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from spicompute.errors import InputError


def nuisance_table(frames_table: str, frames_h5: str, average_id: np.ndarray) -> pd.DataFrame:
    """Per average: member frames, mean photons per member frame, bootstrap run.

    These carry no shape information; a landscape axis that follows them maps
    noise or fluence, not structure (at low photon counts one can).
    """
    from spicompute.io.frames import open_h5
    from spicompute.io.tables import read_table

    ft = read_table(frames_table)
    for col in ("frame_id", "run", "average_id"):
        if col not in ft.columns:
            raise InputError(frames_table, col, "column missing")
    ft = ft[ft["average_id"] >= 0]
    with open_h5(frames_h5) as h5:
        if "frames/photons" not in h5 or "frames/frame_id" not in h5:
            raise InputError(frames_h5, "frames/photons", "dataset missing")
        photons = pd.Series(h5["frames/photons"][()], index=h5["frames/frame_id"][()])
    ft = ft.assign(photons=photons.reindex(ft["frame_id"].to_numpy()).to_numpy())
    agg = ft.groupby("average_id").agg(n_frames=("frame_id", "size"), mean_photons=("photons", "mean"),
                                       run=("run", "first"))
    return agg.reindex(average_id).reset_index().rename(columns={"index": "average_id"})


NUISANCES = ("n_frames", "mean_photons", "run")


def nuisance_correlations(coords: np.ndarray, nuisance: pd.DataFrame, usable: np.ndarray) -> dict:
    """Spearman rho of every pc with every nuisance variable, over the usable averages."""
    from scipy.stats import spearmanr

    out = {}
    for j in range(coords.shape[1]):
        row = {}
        for name in NUISANCES:
            v = nuisance[name].to_numpy(np.float64)
            ok = usable & np.isfinite(v) & np.isfinite(coords[:, j])
            rho = spearmanr(coords[ok, j], v[ok])[0] if ok.sum() > 3 and np.ptp(v[ok]) > 0 else float("nan")
            row[name] = None if not np.isfinite(rho) else float(rho)
        out[f"pc_{j + 1}"] = row
    return out
