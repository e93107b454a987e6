"""Latent density ("energy landscape"): a Gaussian kernel density of the averages,
each weighted by its member frames, drawn as -log density.

Class averages are not samples of equal weight: an average of 300 frames stands
for 300 particles, one of 3 frames for 3.  The density of *particles* in an
embedding is therefore the kernel density of the averages weighted by
``n_frames``.  The bandwidth is Scott's rule on the weighted data, as
``scipy.stats.gaussian_kde`` computes it: the kernel covariance is the weighted
data covariance times ``factor**2`` with ``factor = n_eff ** (-1 / (d + 4))``
and ``n_eff = (sum w)**2 / sum w**2`` (Kish's effective sample size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Density:
    """A kernel density on a regular grid.

    axes: one (G,) coordinate array per dimension (the embedding's units);
    density: (G,) for d = 1 or (G, G) indexed [y, x] for d = 2, normalised to
    integrate to 1; energy: -log(density / max density), NaN where the density
    is below ``exp(-max_energy)`` of its peak; bandwidth: (d,) kernel standard
    deviation along each axis; factor: Scott's factor; n_eff: effective number
    of samples.
    """

    axes: list
    density: np.ndarray
    energy: np.ndarray
    bandwidth: np.ndarray
    factor: float
    n_eff: float

    def caption(self, names: list[str], weighted: bool) -> str:
        bw = ", ".join(f"{n}: {b:.3g}" for n, b in zip(names, self.bandwidth))
        what = "weighted by member frames (n_frames)" if weighted else "unweighted (no n_frames)"
        return (f"−log density of the averages {what}: Gaussian kernel, Scott's rule, "
                f"bandwidth σ = {bw} (factor {self.factor:.3g} × the weighted standard deviation, "
                f"n_eff = {self.n_eff:.0f}). "
                + ("Contour lines every 0.5 from 0.5 (next to the densest point) outwards"
                   if len(self.axes) == 2 else "The curve is 0 at the densest point")
                + "; +1 = e times fewer particles.")


def weighted_density(points: np.ndarray, weights: np.ndarray | None = None, n_grid: int = 80,
                     pad: float = 0.15, max_energy: float = 8.0, direct_max: int = 2000) -> Density:
    """Kernel density of ``points`` (N, d) with d in {1, 2}, weights (N,) >= 0 (None: equal).

    The grid spans the data range widened by ``pad`` of it on each side.  Up to
    ``direct_max`` points the kernel sum is evaluated exactly; above, the weights are
    binned on the grid (linear binning) and convolved with the same kernel by FFT,
    which keeps 10,000 averages well under a second.  Raises
    ValueError for fewer than d + 2 finite points, negative or all-zero weights, or
    data without spread along an axis.
    """
    from scipy.stats import gaussian_kde

    pts = np.asarray(points, np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    d = pts.shape[1]
    if d not in (1, 2):
        raise ValueError(f"density needs 1 or 2 dimensions, got {d}")
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, np.float64)
    keep = np.all(np.isfinite(pts), axis=1) & np.isfinite(w)
    pts, w = pts[keep], w[keep]
    if len(pts) < d + 2:
        raise ValueError(f"density needs at least {d + 2} finite points, got {len(pts)}")
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError("density weights must be >= 0 and not all zero")
    lo, hi = pts.min(0), pts.max(0)
    if np.any(hi <= lo):
        raise ValueError("density needs spread along every axis")
    kde = gaussian_kde(pts.T, weights=w, bw_method="scott")
    span = hi - lo
    axes = [np.linspace(lo[k] - pad * span[k], hi[k] + pad * span[k], n_grid) for k in range(d)]
    if len(pts) <= direct_max:
        if d == 1:
            dens = kde(axes[0])
        else:
            gx, gy = np.meshgrid(axes[0], axes[1])        # [y, x], as plotly's contour z
            dens = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
    else:
        dens = _binned(pts, w, axes, kde.covariance)
    top = dens.max()
    energy = -np.log(np.maximum(dens, top * np.exp(-max_energy - 1)) / top)
    energy[energy > max_energy] = np.nan
    return Density(axes=axes, density=dens, energy=energy,
                   bandwidth=np.sqrt(np.diag(np.atleast_2d(kde.covariance))),
                   factor=float(kde.factor), n_eff=float(kde.neff))


def _binned(pts: np.ndarray, w: np.ndarray, axes: list, covariance: np.ndarray) -> np.ndarray:
    """Kernel density on the grid ``axes`` by linear binning + FFT convolution with the
    Gaussian of ``covariance`` ([y, x] for d = 2); integrates to one like the exact sum."""
    from scipy.signal import fftconvolve

    d = pts.shape[1]
    steps = np.array([a[1] - a[0] for a in axes])
    n = len(axes[0])
    grid = np.zeros((n,) * d)
    # linear binning: each point's weight shared by the 2**d grid nodes around it
    pos = (pts - np.array([a[0] for a in axes])) / steps
    base = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    frac = np.clip(pos - base, 0.0, 1.0)
    for corner in np.ndindex(*(2,) * d):
        c = np.array(corner)
        share = w * np.prod(np.where(c, frac, 1.0 - frac), axis=1)
        idx = tuple((base[:, k] + c[k]) for k in range(d))[::-1]   # [y, x] order
        np.add.at(grid, idx, share)
    offsets = [np.arange(-(n - 1), n) * steps[k] for k in range(d)]
    mesh = np.meshgrid(*offsets, indexing="xy") if d == 2 else [offsets[0]]
    r = np.stack([m.ravel() for m in mesh], axis=1)
    inv = np.linalg.inv(np.atleast_2d(covariance))
    norm = np.sqrt((2 * np.pi) ** d * np.linalg.det(np.atleast_2d(covariance)))
    kernel = (np.exp(-0.5 * np.einsum("ni,ij,nj->n", r, inv, r)) / norm).reshape(mesh[0].shape)
    dens = fftconvolve(grid, kernel, mode="same") / w.sum()
    return np.maximum(dens, 0.0)  # FFT round-off can leave tiny negatives
