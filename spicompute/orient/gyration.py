"""Each average's anisotropy at low q: elongated particles (dimers, rods) against round ones.

At low q a pattern follows Guinier's law, ``I(q) ~ I0 exp(-q^T G q)``, with G
the particle's radius-of-gyration tensor projected on the detector plane.  A
particle with cubic (or icosahedral) symmetry has an isotropic gyration
tensor, so *every* view of it is round at low q: a cube, a melted cube and a
sphere alike.  Two touching cubes seen from the side have G in a ratio 4:1
(a rod more): their central speckle is elongated, an intensity modulation
``cos 2 theta`` around each ring.

:func:`low_q_anisotropy` measures that modulation: within the band
``q_min .. q_max`` each observed pixel's intensity relative to the mean of
its 1-pixel ring, and the modulus of its mean against ``exp(2 i theta)``.
0 for a round pattern (up to shot noise), about 0.5 for a dimer seen from
the side.  :func:`guinier_band` puts the band where the Guinier term
dominates: from the innermost ring the averages observe to ``q R = 2.5``
(R: the particle's sphere-equivalent radius), in physical units.

Measured on eight simulated 400-average sets (2026-12-06, docs/vae_volumes.md;
band 0.052-0.096 rad/nm for the 42 nm cube on the 129² demo detector):
cube, melt and sphere averages read <= 0.06 at the 99th percentile, dimers
and rods >= 0.1 at the 1st; the dimers are what the common-line landscape
cannot tell from cubes.
"""

from __future__ import annotations

import numpy as np

from spicompute.io.averages import AverageSet

# q R where the band stops: the sphere's central speckle ends at q R = 4.49; the
# separation of dimers from cubes held for 2.0-3.0 (docs/vae_volumes.md)
GUINIER_QR = 2.5
# innermost ring used: observed in this share of its pixels over the averages
INNER_COVERAGE = 0.9


def cube_sphere_radius_nm(edge_nm: float) -> float:
    """Radius (nm) of the sphere with the volume of a cube of edge ``edge_nm`` (0.620 x edge)."""
    return float(edge_nm) * (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


def guinier_band(averages: AverageSet, radius_nm: float, qr_max: float = GUINIER_QR,
                 inner_coverage: float = INNER_COVERAGE) -> tuple[float, float] | None:
    """(q_min, q_max) in rad/nm of the low-q band, or None when it holds fewer than two rings.

    q_min: the innermost radius whose 1-pixel ring is observed in at least
    ``inner_coverage`` of its pixels over all averages; q_max = qr_max /
    ``radius_nm`` (the particle's sphere-equivalent radius; the orient stage
    passes its reference's, :func:`cube_sphere_radius_nm` of ``orient.edge_nm``:
    a size fitted to the averages' mean profile is pulled off by the
    contaminants at 400 photons).
    """
    from spicompute.qrange import radial_profile

    q, _, coverage = radial_profile(averages)
    inner = np.flatnonzero((q > 0) & (coverage >= inner_coverage))
    if inner.size == 0 or not radius_nm > 0:
        return None
    q_min, q_max = float(q[inner[0]]), qr_max / float(radius_nm)
    if q_max < q_min + averages.dq_nm:   # fewer than two rings: nothing to measure
        return None
    return q_min, q_max


def low_q_anisotropy(intensity: np.ndarray, observed: np.ndarray, dq_nm: float,
                     q_min_nm: float, q_max_nm: float) -> np.ndarray:
    """(N,) cos 2 theta modulation of each pattern in the band q_min..q_max (rad/nm).

    intensity: (N, L, L) patterns centred at (L // 2, L // 2); observed: (N, L, L)
    bool; dq_nm: grid step.  Per pattern, each observed pixel in the band is
    divided by the mean of its ring (1-pixel rings), and the result is
    ``|mean(rel * exp(2 i theta))|``.  NaN where a pattern observes no pixel in the band.
    """
    from spicompute.qrange import ring_sums

    intensity = np.asarray(intensity, np.float64)
    observed = np.asarray(observed, bool)
    size = intensity.shape[-1]
    y, x = np.mgrid[:size, :size] - size // 2
    radius = np.hypot(x, y)
    band = (radius * dq_nm >= q_min_nm) & (radius * dq_nm <= q_max_nm)
    ring = np.round(radius[band]).astype(np.int64)
    ring -= ring.min()
    n_rings = int(ring.max()) + 1
    phase = np.exp(2j * np.arctan2(y, x)[band])
    w = observed[:, band].astype(np.float64)                       # (N, P)
    values = np.where(w > 0, intensity[:, band], 0.0)
    ring_sum, ring_count = ring_sums(values, w, ring, n_rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        ring_mean = ring_sum / ring_count
        relative = np.where(w > 0, values / np.take_along_axis(ring_mean, np.broadcast_to(ring, w.shape), 1), 0.0)
        relative = np.where(np.isfinite(relative), relative, 0.0)
        count = w.sum(1)
        return np.where(count > 0, np.abs((relative * phase).sum(1)) / count, np.nan)
