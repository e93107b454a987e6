"""Photon conversion and lit-pixel hit finding for pixel-detector frames.

These are the detector-agnostic pieces of the EuXFEL ingest: they
work on any stack of calibrated frames, e.g. AGIPD module data of shape
(n_frames, 16, 512, 128) or flattened (n_frames, P).

Photon conversion rule
----------------------
A pixel value ``x`` (keV, or ADU) is divided by the energy of one photon
(``photon_energy_kev``, or ``adu_per_photon``) giving ``e`` photons-equivalent.
The integer photon count is

    n = floor(e + 1 - t)   for e >= t,      n = 0 otherwise,

with the rounding threshold ``t`` in (0, 1] (default 0.5, i.e. round half up).
Integer-photon inputs are reproduced exactly for any ``t`` in (0, 1].
NaN / inf values and masked pixels give 0 photons.

Automatic hit threshold
-----------------------
The lit-pixel count ``L`` (pixels with >= 1 photon) of the frames is dominated
by blanks (hit rates are a few per cent), so the background distribution is
estimated robustly: median ``m`` and ``s = max(1.4826 * MAD, sqrt(m), 1)``
(the Poisson floor ``sqrt(m)`` guards against a zero MAD for sparse
backgrounds).  A frame is a hit when ``L > m + k * s`` with ``k = hit_sigma``
(default 5).  A given number overrides the rule.
"""

from __future__ import annotations

import numpy as np

from spicompute.errors import ParameterError

MAD_TO_SIGMA = 1.4826  # sigma of a normal distribution per median absolute deviation


def to_photons(values, unit_per_photon: float, threshold: float = 0.5,
               mask=None) -> np.ndarray:
    """Convert calibrated pixel values to integer photon counts.

    values : array (..., any shape) of energies in keV or ADU (float).
    unit_per_photon : keV per photon (the photon energy) or ADU per photon (> 0).
    threshold : rounding threshold in photons, in (0, 1] (see module docstring).
    mask : optional bool array broadcastable to ``values``; True = good pixel.
    Returns int32 array of the same shape, >= 0.
    """
    if not np.isfinite(unit_per_photon) or unit_per_photon <= 0:
        raise ParameterError("data.photon_energy_kev/adu_per_photon",
                             f"must be > 0, got {unit_per_photon}")
    if not (0.0 < threshold <= 1.0):
        raise ParameterError("data.photon_threshold", f"must be in (0, 1], got {threshold}")
    e = np.asarray(values, dtype=np.float32) / np.float32(unit_per_photon)
    e = np.where(np.isfinite(e), e, 0.0)
    n = np.floor(e + np.float32(1.0 - threshold))
    n = np.where(e >= threshold, n, 0.0)
    n = np.clip(n, 0, np.iinfo(np.int32).max).astype(np.int32)
    if mask is not None:
        n = np.where(np.asarray(mask, dtype=bool), n, 0).astype(np.int32)
    return n


def lit_pixels(photons) -> np.ndarray:
    """Number of pixels with at least one photon per frame.

    photons : int array (N, ...) of photon counts.
    Returns (N,) int64.
    """
    p = np.asarray(photons)
    return (p.reshape(p.shape[0], -1) > 0).sum(axis=1, dtype=np.int64)


def auto_threshold(lit, hit_sigma: float = 5.0) -> float:
    """Lit-pixel threshold from the distribution of lit-pixel counts.

    lit : (N,) lit-pixel counts of (mostly blank) frames.
    hit_sigma : k of the rule ``m + k * max(1.4826 MAD, sqrt(m), 1)``.
    Returns the threshold (a frame is a hit when lit > threshold).
    """
    lit = np.asarray(lit, dtype=np.float64)
    if lit.size == 0:
        raise ParameterError("data.hit_threshold", "auto needs at least one frame")
    if hit_sigma <= 0:
        raise ParameterError("data.hit_sigma", f"must be > 0, got {hit_sigma}")
    m = float(np.median(lit))
    mad = float(np.median(np.abs(lit - m)))
    s = max(MAD_TO_SIGMA * mad, np.sqrt(m), 1.0)
    return m + hit_sigma * s


def resolve_threshold(lit, hit_threshold="auto", hit_sigma: float = 5.0) -> float:
    """The threshold to use: ``auto`` (the rule above) or a given number >= 0."""
    if hit_threshold in (None, "auto", ""):
        return auto_threshold(lit, hit_sigma)
    try:
        t = float(hit_threshold)
    except (TypeError, ValueError):
        raise ParameterError("data.hit_threshold", f"must be 'auto' or a number, got {hit_threshold!r}")
    if t < 0:
        raise ParameterError("data.hit_threshold", f"must be >= 0, got {t}")
    return t


def lit_histogram(lit, threshold: float, bins: int = 64):
    """Histogram of lit-pixel counts for reports / plots.

    Returns (edges (bins+1,), counts (bins,)) spanning 0 .. max(lit, 2 * threshold).
    """
    lit = np.asarray(lit, dtype=np.float64)
    top = max(float(lit.max()) if lit.size else 1.0, 2.0 * threshold, 1.0)
    counts, edges = np.histogram(lit, bins=bins, range=(0.0, top))
    return edges, counts
