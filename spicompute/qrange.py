"""The usable q-range of a set of class averages, from the data (``auto`` radii).

Every stage that works on averages needs a radial range: the orientation fit,
the regressor's features, the common lines, the VAE.  Grid-step defaults tuned
to one detector break on the next (a 101-pixel detector has no radius 60), and
a range chosen by coverage alone follows shot noise at low photon counts: at
the detector corner a class average holds well under one expected photon per
grid point.  So ``auto`` resolves, from the averages themselves:

- ``q_min``: the beamstop edge, the first radius observed in at least
  ``inner_coverage`` of its pixels;
- ``q_max``: the smallest of the grid radius (the inscribed circle), the last
  radius observed in at least ``outer_coverage`` of its pixels, and the signal
  limit -- the last radius where a typical average (median occupancy) still
  holds ``min_counts`` expected photons per grid point (mean radial intensity,
  in mean photons per pixel per frame, times ``n_frames``) *and at least twice
  its flat floor*.

The floor is what the averages hold where the particle no longer scatters:
background the 2D EMC did not model away (at 400 particle + 50 background
photons per frame, ~4 photons per grid point per average, more than a typical
average's particle signal at high q).  Were it counted as signal, the counts
rule would never end and q_max would reach the detector edge, with every stage
downstream fitting the floor.  Asking for twice the floor asks the particle to
contribute at least as much as the floor; below ``min_counts / 2`` the floor
changes nothing.  It is estimated as the median of the profile over the outer
third of the covered radii (:func:`signal_floor`): a particle's
orientation-averaged intensity falls as q^-4 there, so the median is dominated
by whatever is flat; when the particle does scatter to the edge, the rule moves
the limit in by at most that outer third.

Stages record the resolved values and each limit in their metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spicompute.errors import InputError, ParameterError
from spicompute.io.averages import AverageSet


def radial_profile(averages: AverageSet, dq_bin_nm: float | None = None,
                   index=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean radial intensity of (a subset of) the averages.

    Returns (q_centres (B,), mean intensity over observed pixels (B,), observed
    share (B,)) in bins of width ``dq_bin_nm`` (default: the grid step), rad/nm;
    bins without an observed pixel get NaN.
    """
    dq_bin_nm = averages.dq_nm if dq_bin_nm is None else dq_bin_nm
    sel = np.arange(averages.n_averages) if index is None else np.asarray(index)
    q = np.linalg.norm(averages.q_grid(ewald=False)[..., :2], axis=-1)
    rbin = np.floor(q / dq_bin_nm + 0.5).astype(np.int64).ravel()
    nb = int(rbin.max()) + 1
    w = averages.valid[sel].reshape(len(sel), -1).astype(np.float64)
    iw = averages.intensity[sel].reshape(len(sel), -1).astype(np.float64) * w
    sw = np.bincount(rbin, weights=w.sum(0), minlength=nb)
    si = np.bincount(rbin, weights=iw.sum(0), minlength=nb)
    npix = np.bincount(rbin, minlength=nb) * len(sel)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sw > 0, si / sw, np.nan)
    return np.arange(nb) * dq_bin_nm, mean, sw / np.maximum(npix, 1)


def ring_sums(values: np.ndarray, weights: np.ndarray, ring: np.ndarray, n_rings: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, weighted sums over rings: (sum of w * v (M, R), sum of w (M, R)).

    values, weights : (M, P) one row per average over P pixels (weight 0: not observed;
    the value there is ignored, NaN included); ring : (P,) int in [0, n_rings).
    One bincount over (row, ring) keys for all rows at once.
    """
    w = np.asarray(weights, np.float64)
    v = np.where(w != 0, np.asarray(values, np.float64), 0.0)
    m = len(w)
    keys = (np.arange(m)[:, None] * n_rings + np.asarray(ring)[None, :]).ravel()
    sums = np.bincount(keys, (w * v).ravel(), m * n_rings).reshape(m, n_rings)
    totals = np.bincount(keys, w.ravel(), m * n_rings).reshape(m, n_rings)
    return sums, totals


def signal_floor(q_axis: np.ndarray, profile: np.ndarray, coverage: np.ndarray, q_lo_nm: float,
                 outer_coverage: float = 0.5) -> float:
    """Flat intensity floor under the particle's signal (same units as ``profile``).

    The median of the radial profile over the outer third of the radii beyond
    ``q_lo_nm`` observed in at least ``outer_coverage`` of their pixels; 0 when
    fewer than 6 radii are covered.  Shapes (B,) for the three arrays.
    """
    covered = (q_axis > q_lo_nm) & (coverage >= outer_coverage) & np.isfinite(profile)
    if np.count_nonzero(covered) < 6:
        return 0.0
    q_top = float(q_axis[covered].max())
    outer = covered & (q_axis >= q_lo_nm + (q_top - q_lo_nm) * 2.0 / 3.0)
    return max(float(np.median(profile[outer])), 0.0)


@dataclass
class QRange:
    """Resolved q-range (rad/nm), the limits it was chosen from and the signal floor.

    ``floor`` is in mean photons per pixel per frame (:func:`signal_floor`); 0
    when the bounds were given.
    """

    q_min_nm: float
    q_max_nm: float
    limits: dict = field(default_factory=dict)
    floor: float = 0.0

    def radii(self, dq_nm: float) -> tuple[float, float]:
        """The range in grid steps of ``dq_nm``."""
        return self.q_min_nm / dq_nm, self.q_max_nm / dq_nm

    def to_dict(self) -> dict:
        return {"q_min_nm": self.q_min_nm, "q_max_nm": self.q_max_nm,
                "q_max_limits": {k: float(v) for k, v in self.limits.items()},
                "signal_floor": float(self.floor)}


def resolve_q_range(averages: AverageSet, q_min_nm="auto", q_max_nm="auto", *, min_counts: float = 1.0,
                    inner_coverage: float = 0.5, outer_coverage: float = 0.5, index=None,
                    section: str = "", source: str = "averages", extra_limits: dict | None = None) -> QRange:
    """Resolve ``auto`` (or check given) q bounds of the averages; see the module docstring.

    ``extra_limits`` adds named upper bounds (e.g. a Nyquist limit) to the auto q_max.
    A given bound beyond the grid is an error naming ``<section>.q_max_nm``.
    """
    q_axis, prof, coverage = radial_profile(averages, index=index)
    grid_radius = (averages.size // 2) * averages.dq_nm
    inner = np.flatnonzero(coverage >= inner_coverage)
    if inner.size == 0:
        raise InputError(source, "averages/weight", f"no radius is observed in {inner_coverage:.0%} of its pixels")
    q_lo = float(q_axis[inner[0]]) if q_min_nm == "auto" else float(q_min_nm)
    if q_max_nm == "auto":
        sel = np.arange(averages.n_averages) if index is None else np.asarray(index)
        n_typ = float(np.median(averages.n_frames[sel]))
        beyond = q_axis > q_lo
        floor = signal_floor(q_axis, prof, coverage, q_lo, outer_coverage)
        threshold = max(min_counts, 2.0 * floor * n_typ)   # expected photons per grid point
        weak = np.flatnonzero(beyond & ~(prof * n_typ >= threshold))
        covered = np.flatnonzero(beyond & (coverage >= outer_coverage))
        limits = {"grid_radius_nm": grid_radius,
                  "coverage_nm": float(q_axis[covered[-1]]) if covered.size else q_lo,
                  "counts_nm": float(q_axis[weak[0] - 1]) if weak.size and weak[0] > 0 else float(q_axis[-1])}
        limits.update(extra_limits or {})
        q_hi = float(min(limits.values()))
    else:
        q_hi = float(q_max_nm)
        limits = {"given_nm": q_hi}
        floor = 0.0
        if q_hi > grid_radius + 1e-9:
            raise ParameterError(f"{section}.q_max_nm" if section else "q_max_nm",
                                 f"{q_hi:.4g} rad/nm exceeds the averages' grid radius {grid_radius:.4g} rad/nm")
    if not q_hi > q_lo + 2 * averages.dq_nm:
        raise InputError(source, "averages/intensity",
                         f"usable q-range {q_lo:.3f}..{q_hi:.3f} rad/nm is too narrow "
                         f"(limits {', '.join(f'{k} {v:.3f}' for k, v in limits.items())})")
    return QRange(q_lo, q_hi, limits, floor)


def auto_or_positive(name: str, value, *, allow_zero: bool = False):
    """``"auto"`` or a positive number (ParameterError naming ``name`` otherwise)."""
    from spicompute.params import positive

    if value == "auto" or value is None:
        return "auto"
    return positive(name, value, allow_zero=allow_zero)
