"""Points along the latent line."""

from __future__ import annotations

import itertools

import numpy as np


def latent_span(z: np.ndarray, percentiles="auto") -> tuple[np.ndarray, np.ndarray]:
    """(lo (d,), hi (d,)) of the encoded z (N, d) of the trained averages.

    auto: the m-th smallest and m-th largest value per axis, m = max(2,
    ceil(0.005 N)) (bounded by N); else ``percentiles`` [lo, hi] in percent.
    """
    z = np.asarray(z, np.float64)
    if percentiles != "auto":
        lo, hi = np.percentile(z, percentiles, axis=0)
        return lo, hi
    n = len(z)
    m = min(max(2, int(np.ceil(0.005 * n))), n)
    ordered = np.sort(z, axis=0)
    return ordered[m - 1], ordered[n - m]


def latent_points(z: np.ndarray, p: dict) -> np.ndarray:
    """Line (d = 1) or grid (d > 1) over :func:`latent_span` of encoded z (N, d) -> (P, d)."""
    lo, hi = latent_span(z, p["percentiles"])
    d = z.shape[1]
    if d == 1:
        return np.linspace(lo[0], hi[0], p["n_points"])[:, None]
    axes = [np.linspace(lo[i], hi[i], p["grid_per_axis"]) for i in range(d)]
    return np.asarray(list(itertools.product(*axes)))
