"""Particle size from the data, and the in-plane rotation count it implies.

The speckle width of a particle of diameter D is ``dq = 2 pi / D``.  2D EMC
needs in-plane rotations fine enough that the arc swept at the largest radius
used, ``q_max * dtheta``, is about half a speckle::

    dtheta = pi / (D q_max)   ->   n_rot = 2 pi / dtheta = 2 D q_max

D is given in nm or estimated by fitting the frames' mean radial intensity
profile with a size-smeared sphere form factor (the paper's sphere-fit size).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp

from spicompute.geometry import Detector
from spicompute.qrange import signal_floor

log = logging.getLogger("spicompute.particle_size")

# first zero of the sphere form factor: tan(x) = x
FIRST_SPHERE_ZERO = 4.4934


def estimate_particle_size(q_nm: np.ndarray, profile: np.ndarray, q_start_nm: float,
                           q_end_nm: float | None = None, *, flat_offset: bool = False) -> float | None:
    """Sphere-equivalent diameter (nm) by fitting a radial profile with a sphere form factor.

    The radial profile is compared with ``|F_sphere(q; R)|^2`` averaged over +-10 % in R
    (size spread and orientation averaging smear the minima of real particles), for R
    on a log grid from 2 nm up to the largest radius whose fringes (period pi / R) the
    profile still samples twice, all scored on the same q-range ``q_start..q_end``:
    by default in log scale with a free scale factor; with ``flat_offset`` as
    ``s |F|^2 + c`` (s > 0, flat offset 0 <= c <= the profile's minimum, least squares
    in relative residuals, :func:`offset_fit_scores`).  The offset takes up what is
    flat under the particle -- background in frames: without it a flat tail reads as
    the slow decay of a smaller sphere, or as no size (docs/classify2d.md).  This is
    the paper's sphere-fit size, used to bound the VAE's q_max (Nyquist; default fit)
    and for ``n_rot: auto`` (frames, with the offset).
    None when fewer than 8 profile points are usable, when the best fit sits at the
    largest radius (fringes unresolved), when the profile is a featureless power law,
    or when the first minimum of the best sphere (q R = 4.49) lies beyond the fitted
    range: a profile that never reaches a fringe constrains only the slope, and a
    background floor then fits as a tiny sphere.
    """
    ok = np.isfinite(profile) & (profile > 0) & (q_nm >= q_start_nm)
    if q_end_nm is not None:
        ok &= q_nm <= q_end_nm
    q, p = q_nm[ok], np.asarray(profile, np.float64)[ok]
    if q.size < 8:
        return None
    spread = np.linspace(0.9, 1.1, 7)
    radii = np.geomspace(2.0, max(np.pi / (2 * np.median(np.diff(q))), 2.5), 300)
    x = q[None, :, None] * (radii[:, None] * spread[None, :])[:, None, :]      # (R, Q, 7)
    form = np.mean((3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2, axis=2)     # (R, Q)
    logp = np.log(p)
    if flat_offset:
        score = offset_fit_scores(form, p)
    else:
        score = np.var(logp[None, :] - np.log(np.maximum(form, 1e-30)), axis=1)
    best = int(np.argmin(score))
    best_r = float(radii[best])
    # a profile within ~3 % of a power law has no fringes to size (Porod-like decay)
    power_law = np.var(logp - np.polyval(np.polyfit(np.log(q), logp, 1), np.log(q)))
    if not np.isfinite(score[best]) or best >= len(radii) - 2 or power_law < 1e-3:
        return None
    if best_r * q[-1] < FIRST_SPHERE_ZERO:
        return None
    return float(2 * best_r)


def offset_fit_scores(form: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Misfit of the best ``profile ~ s form + c`` per row of ``form`` (s > 0, 0 <= c <= the
    profile's minimum), in relative residuals ``(s form + c - p) / max(p, floor)``.

    form : (R, Q) candidate form factors; profile : (Q,) > 0.  ``floor`` (10^-3 of the
    profile's maximum) keeps the near-zeros of a noise-free fringe from dominating; measured
    profiles (noise, smearing, 2-3 decades over the fitted range) barely reach it.  Closed
    form per row: the 2x2 normal equations, with c clipped to its bounds and s refitted
    there.  Returns (R,) mean squared residuals, inf where no s > 0 fits.  (Scoring the
    same fit by log residuals was measured worse: 31-35 nm instead of ~50 on two
    low-photon sets, 265-273 nm on three sets of frames.)
    """
    p = np.asarray(profile, np.float64)
    w = 1.0 / np.maximum(p, 1e-3 * p.max())
    a, b, target = np.asarray(form, np.float64) * w, w, p * w          # s a + c b ~ target
    saa, sab, sbb = (a * a).sum(1), a @ b, float(b @ b)
    sat, sbt, stt = a @ target, float(b @ target), float(target @ target)
    det = saa * sbb - sab * sab
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (sat * sbb - sbt * sab) / det
        c = (saa * sbt - sab * sat) / det
        bad = ~np.isfinite(det) | (det <= 0) | ~np.isfinite(c)
        c = np.where(bad, 0.0, np.clip(c, 0.0, float(p.min())))
        s = np.where(bad | (c == 0.0) | (c == float(p.min())), (sat - c * sab) / saa, s)
    # sum (s a + c b - t)^2 expanded: no (R, Q) residual array
    sse = s * s * saa + c * c * sbb + stt + 2 * s * c * sab - 2 * s * sat - 2 * c * sbt
    return np.where(s > 0, np.maximum(sse, 0.0) / a.shape[1], np.inf)


def radial_profile(counts: sp.csr_matrix, detector: Detector, bin_nm: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean photons per pixel and frame in radial bins, corrected.

    Parameters
    ----------
    counts : csr (N, P) photons per pixel (P = detector pixels).
    bin_nm : radial bin width, rad/nm (default: the detector's dq_nm).

    Returns
    -------
    q (B,) bin centres rad/nm; profile (B,) mean counts / correction per
    unmasked pixel (NaN for empty bins).
    """
    dq = float(bin_nm or detector.dq_nm)
    radius = np.linalg.norm(detector.q_perp, axis=1)
    good = detector.mask
    idx = np.floor(radius / dq).astype(np.int64)
    nb = int(idx[good].max()) + 1
    tot = np.asarray(counts.sum(axis=0), np.float64).ravel() / max(counts.shape[0], 1)
    tot = tot / np.maximum(detector.correction(), 1e-12)
    s = np.bincount(idx[good], tot[good], minlength=nb)
    n = np.bincount(idx[good], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = np.where(n > 0, s / n, np.nan)
    return (np.arange(nb) + 0.5) * dq, prof


def estimate_particle_size_nm(counts: sp.csr_matrix, detector: Detector) -> float | None:
    """Sphere-equivalent diameter (nm) from the frames' mean radial profile.

    The profile (:func:`radial_profile`, bins of half the detector's q step)
    beyond its brightest bin (the beamstop edge), less its flat floor (median of the
    outer third of the radii) and up to where it falls below twice that floor, is
    fitted with a size-smeared sphere form factor plus a flat offset
    (:func:`estimate_particle_size`, the paper's sphere-fit size).  None when the
    profile has no fringes to size.
    """
    q, prof = radial_profile(counts, detector, bin_nm=detector.dq_nm / 2)
    ok = np.isfinite(prof) & (prof > 0)
    if ok.sum() < 8:
        return None
    start = int(np.nanargmax(np.where(ok, prof, np.nan)))
    # where the particle no longer scatters the profile is background: the fit stops where the
    # profile falls below twice its flat floor (the rule that also bounds q_max)
    floor = signal_floor(q, np.where(ok, prof, np.nan), np.ones_like(q), float(q[start]))
    beyond = ok & (np.arange(len(q)) >= start)
    strong = np.flatnonzero(beyond & (prof >= 2.0 * floor))
    q_end = float(q[strong.max()]) if len(strong) else None
    return estimate_particle_size(q, prof - floor, q_start_nm=float(q[start]), q_end_nm=q_end, flat_offset=True)


def auto_n_rot(size_nm: float, q_max_nm: float, *, half_turn: bool = False, minimum: int = 8
               ) -> int:
    """In-plane rotations so the arc at ``q_max`` is half a speckle (2 pi / D).

    ``n = ceil(2 D q_max)`` over 360 deg (half that over 180 deg with
    ``half_turn``), rounded up to a multiple of 4 and at least ``minimum``.
    """
    n = 2.0 * float(size_nm) * float(q_max_nm)
    if half_turn:
        n /= 2
    n = max(int(minimum), int(math.ceil(n)))
    return int(4 * math.ceil(n / 4))
