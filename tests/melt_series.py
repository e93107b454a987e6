"""A small simulated melt series of 2D averages at known orientations (for VAE/volume tests).

Cube (t = 0) -> sphere (t = 1) superellipsoids (spicompute.shapes), each
average the Ewald slice of its shape's intensity at a random orientation,
Poisson-sampled at a given number of photons per average.
"""

from __future__ import annotations

import numpy as np

from spicompute.geometry import grid_q
from spicompute.io.averages import AverageSet
from spicompute.shapes import melt_half_size, superellipsoid_exponent, superellipsoid_intensity_volume
from spicompute.orient.slicing import VolumeSampler
from spicompute.orient.quaternions import random_quaternions

EDGE_NM = 42.0


def melt_volumes(levels: np.ndarray, size: int = 65, dq_nm: float = 0.03) -> np.ndarray:
    """(T, size, size, size) intensities of the melt family at the given t levels (t = 0: p = 60)."""
    with np.errstate(over="ignore"):  # |x/r|^60 overflows far outside the particle: density 0 there
        return np.stack([superellipsoid_intensity_volume(size, dq_nm, 2, melt_half_size(t, EDGE_NM, 0.1),
                                                         superellipsoid_exponent(t) if t > 0 else 60.0)
                         for t in levels])


def melt_averages(n: int, seed: int = 0, grid: int = 41, dq_nm: float = 0.045, wavelength_nm: float = 0.2066,
                  photons: float = 2e5, n_levels: int = 6, beamstop_px: float = 2.0, vol_dq: float = 0.03,
                  n_frames: float = 200.0):
    """(AverageSet, t (n,), quaternions (n, 4), level volumes, level t) of a noisy melt series.

    Each average holds ``photons`` photons from ``n_frames`` frames; its intensity is in
    mean photons per pixel per frame, as a class average of real frames is.
    """
    rng = np.random.default_rng(seed)
    levels = np.linspace(0, 1, n_levels)
    vols = melt_volumes(levels, dq_nm=vol_dq)
    t = rng.uniform(0, 1, n)
    quats = random_quaternions(n, rng)
    q = grid_q(grid, dq_nm, wavelength_nm).reshape(-1, 3)
    slices = np.stack([VolumeSampler(v, vol_dq).slices(q, quats) for v in vols])  # (T, n, P)
    pos = t * (n_levels - 1)
    lo = np.minimum(pos.astype(int), n_levels - 2)
    frac = (pos - lo)[:, None]
    idx = np.arange(n)
    clean = (1 - frac) * slices[lo, idx] + frac * slices[lo + 1, idx]
    qn = np.linalg.norm(q[:, :2], axis=1)
    valid = (qn >= beamstop_px * dq_nm) & (np.linalg.norm(q, axis=1) <= (vols.shape[1] // 2 - 1) * vol_dq)
    k = photons / clean[:, valid].sum(1)
    counts = rng.poisson(clean * k[:, None])
    inten = (counts / n_frames).astype(np.float32) * valid
    weight = np.broadcast_to(valid.astype(np.float32), inten.shape)
    avg = AverageSet(inten.reshape(n, grid, grid), weight.reshape(n, grid, grid), np.arange(n),
                     np.arange(n) % 4, np.arange(n) // 4, np.full(n, float(n_frames)), dq_nm, wavelength_nm)
    return avg, t, quats, vols, levels
