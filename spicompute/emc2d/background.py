"""Expected background per pixel, estimated from the hits themselves.

Real SPI frames carry photons that do not come from the particle (gas,
aperture scatter, solvent, stray light): tens of photons per frame, about
constant from shot to shot, while the particle's own signal scales with the
fluence it happened to meet in the focus (a factor of several).  EMC without
a background term has to explain a weak frame's background share with its
model, so it groups frames by their background-to-signal ratio -- i.e. by
fluence -- instead of by shape; at 400 particle + 50 background photons a
CLPCA component then follows photons per frame (|rho| ~0.9).

Estimate (no dark/non-hit frames needed): in radial bins of |q|, a frame's
counts are ``k_n(r) = phi_n a_n(r) + b(r) + noise``.  The innermost bins are
dominated by the particle's forward scattering; their counts (each bin a
separate regressor, so that both the fluence and the size-dependent fall-off
are captured) predict the particle part of every outer bin, and the
least-squares intercept over all frames is ``b(r)`` -- what a frame of zero
fluence would still record.  The inner bins' own background is extrapolated
at the first outer bin's level per unit efficiency.  The bin totals are
spread over their pixels in proportion to solid angle x polarisation.

Measured on simulated 129^2 sets (8,000 frames, 400 particle photons): 49.1
estimated for 50 background photons per frame, 3.6 for none.

With ``classify2d.background: refined`` it is refined once per run from the
run's own classes (:func:`refine_background`).
Across the whole data set the inner bins predict the outer ones only on
average: a frame's ratio of mid-q to forward scattering depends on its shape,
view and size, so the intercept of the pooled regression picks up the
population's curvature.  Measured against the simulator's truth per radial bin
(8,000 frames, 1,500 / 400 particle + 50 background photons): 3.1x / 1.4x the
true background at q ~ 0.27 rad/nm and 0.2x / 0.7x at 0.34, while the total was
right (60 / 50 of 50).  Within one class of a run (one shape and view) the same
regression is nearly linear, so once EMC has formed its classes each bin's
intercept is fitted per class and pooled (inverse variance): 0.98-1.09x
wherever the background is >= 15 % of the counts (docs/classify2d.md).

The estimate is held fixed between refinements: an EM update of the
background (each photon's background share at its frame's best orientation)
drifted to 7 of 50 photons, since the models can absorb a flat term as
fluence-scaled signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

MIN_FRAMES = 50     # fewer frames: no estimate (zero background)
SIGNIFICANCE = 3.0  # a bin's background is kept when its intercept exceeds this many standard errors
MAX_SHARE = 0.5     # an estimate above this share of the photons means the model does not hold: none
MIN_CLASS_FRAMES = 30   # refinement: a class needs this many frames for its own regression
TRUSTED_SHARE = 0.15    # refinement: a bin's class-wise estimate is used where the background is at least
#                         this share of its counts; nearer the centre the particle dominates, and the bins
#                         take the first trusted bin's level per unit efficiency


@dataclass
class BackgroundEstimate:
    """Expected background photons per frame.

    per_pixel : (P,) float64, expected background photons of each pixel per frame
    q_edges_nm : (n_bins + 1,) radial bin edges, rad/nm
    per_bin : (n_bins,) expected background photons per frame in each bin
    signal_per_bin : (n_bins,) mean photons per frame in each bin (particle + background)
    proxy_bins : number of inner bins used as regressors
    """

    per_pixel: np.ndarray
    q_edges_nm: np.ndarray
    per_bin: np.ndarray
    signal_per_bin: np.ndarray
    proxy_bins: int
    pixel_bin: np.ndarray | None = None    # (P,) int radial bin of each pixel (for a refinement)
    efficiency: np.ndarray | None = None   # (P,) the efficiencies it was spread with

    @property
    def photons_per_frame(self) -> float:
        return float(self.per_pixel.sum())

    def to_dict(self) -> dict:
        """Scalars for the stage metrics."""
        total = self.signal_per_bin.sum()
        return {"background_photons_per_frame": self.photons_per_frame,
                "background_share": float(self.per_bin.sum() / total) if total > 0 else 0.0}


def estimate_background(counts: sp.spmatrix, radius_nm: np.ndarray, efficiency: np.ndarray,
                        *, n_bins: int = 24, proxy_bins: int = 3) -> BackgroundEstimate:
    """Expected background per pixel from photon counts of hits.

    Parameters
    ----------
    counts : (N, P) sparse photon counts of the frames on the used pixels
    radius_nm : (P,) transverse |q| of each pixel, rad/nm
    efficiency : (P,) relative solid angle x polarisation of each pixel (> 0)
    n_bins : equal-width radial bins between the smallest and largest radius
    proxy_bins : the innermost non-empty bins, each a separate regressor (the
        particle's forward scattering: fluence and, through the fall-off, size);
        their own background is extrapolated from the next bin's per-efficiency level
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    n, p = counts.shape
    radius_nm = np.asarray(radius_nm, np.float64).reshape(p)
    efficiency = np.asarray(efficiency, np.float64).reshape(p)
    edges = np.linspace(radius_nm.min(), radius_nm.max() * (1 + 1e-9), n_bins + 1)
    bins = pixel_bins(radius_nm, edges)
    per_frame = np.asarray((counts @ bin_matrix(bins, n_bins)).todense())   # (N, n_bins)
    mean_bin = per_frame.mean(axis=0) if n else np.zeros(n_bins)
    zero = BackgroundEstimate(np.zeros(p), edges, np.zeros(n_bins), mean_bin, 0, bins, efficiency)
    lit = np.flatnonzero(mean_bin > 0)
    if n < MIN_FRAMES or lit.size <= proxy_bins:
        return zero
    proxies, rest = lit[:proxy_bins], np.arange(lit[proxy_bins], n_bins)
    # the proxies are Poisson counts: their shot noise would attenuate the slopes and push the
    # intercepts up -- removed from the Gram matrix (errors in variables)
    intercept, variance = zero_fluence_intercepts(per_frame[:, proxies], per_frame[:, rest], shot_noise=True)
    # an intercept is an extrapolation to zero fluence: keep it only where it stands out of
    # its own standard error (a narrow fluence range or shapes the inner bins do not
    # predict make it noise -- better no background than a wrong one)
    stderr = np.sqrt(variance)
    per_bin = np.zeros(n_bins)
    per_bin[rest] = np.where(intercept > SIGNIFICANCE * stderr, intercept, 0.0)
    eff_sum = np.bincount(bins, weights=efficiency, minlength=n_bins)
    first = rest[0]
    if eff_sum[first] > 0:
        per_bin[:first] = per_bin[first] / eff_sum[first] * eff_sum[:first]
    if per_bin.sum() > MAX_SHARE * mean_bin.sum():
        return zero
    return BackgroundEstimate(_spread(per_bin, bins, efficiency), edges, per_bin, mean_bin,
                              len(proxies), bins, efficiency)


def zero_fluence_intercepts(x: np.ndarray, y: np.ndarray, shot_noise: bool = False
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares intercepts of ``y`` (N, B) on the regressors ``x`` (N, R) and their variances (B,).

    The intercept is what ``y`` would be at zero regressors -- for counts regressed on the inner
    bins' counts, a frame of zero fluence, i.e. the background.  ``shot_noise``: the regressors are
    Poisson counts, whose variance (= mean) is removed from the Gram matrix (errors in variables).
    """
    n = len(x)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc = x - x_mean
    gram = xc.T @ xc / n
    if shot_noise:
        gram = gram - np.diag(x_mean)
    slope = np.linalg.lstsq(gram, xc.T @ (y - y_mean) / n, rcond=None)[0]
    resid = (y - y_mean) - xc @ slope
    lever = 1.0 / n + x_mean @ np.linalg.pinv(xc.T @ xc) @ x_mean
    return y_mean - x_mean @ slope, resid.var(axis=0) * lever


def pixel_bins(radius_nm: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The radial bin (P,) int of each pixel for bin edges (n_bins + 1,), rad/nm."""
    n_bins = len(edges) - 1
    return np.clip(np.searchsorted(edges, np.asarray(radius_nm, np.float64), side="right") - 1, 0, n_bins - 1)


def bin_matrix(bins: np.ndarray, n_bins: int) -> sp.csr_matrix:
    """(P, n_bins) 0/1 matrix: photon counts (N, P) @ it = counts per frame and radial bin."""
    p = len(bins)
    return sp.csr_matrix((np.ones(p), (np.arange(p), bins)), shape=(p, n_bins))


def refine_background(per_frame: np.ndarray, classes: np.ndarray, prior: BackgroundEstimate
                      ) -> BackgroundEstimate:
    """The background re-estimated within the classes of an EMC run.

    per_frame : (N, n_bins) photons of each frame in the radial bins of ``prior``
        (``counts @ bin_matrix(prior.pixel_bin, n_bins)``)
    classes : (N,) int, each frame's most probable model (< 0: none)
    prior : the data-set-wide estimate (:func:`estimate_background`); its proxy bins are the
        regressors here too, and its pixels' bins and efficiencies spread the result

    In every class with at least ``MIN_CLASS_FRAMES`` frames, each outer bin's counts are
    regressed on the proxy bins' counts; the intercepts (zero fluence) are pooled over the
    classes with inverse-variance weights.  A bin keeps its pooled value where it stands out
    of its standard error (``SIGNIFICANCE``) and is at least ``TRUSTED_SHARE`` of the bin's
    counts; bins nearer the centre than the first such bin take its level per unit
    efficiency, and an untrusted bin between trusted ones their interpolated level.  With no
    trusted bin (too few classes or frames, no background) the prior is returned.
    """
    per_frame = np.asarray(per_frame, np.float64)
    classes = np.asarray(classes)
    n_bins = len(prior.q_edges_nm) - 1
    if prior.proxy_bins == 0 or prior.photons_per_frame <= 0 or prior.pixel_bin is None:
        return prior
    lit = np.flatnonzero(prior.signal_per_bin > 0)
    proxies, rest = lit[:prior.proxy_bins], np.arange(lit[prior.proxy_bins], n_bins)
    weighted = np.zeros(rest.size)
    weights = np.zeros(rest.size)
    for k in np.unique(classes[classes >= 0]):
        rows = np.flatnonzero(classes == k)
        if rows.size < MIN_CLASS_FRAMES:
            continue
        intercept, variance = zero_fluence_intercepts(per_frame[np.ix_(rows, proxies)],
                                                      per_frame[np.ix_(rows, rest)])
        w = np.where(variance > 0, 1.0 / np.maximum(variance, 1e-300), 0.0)
        weighted += w * intercept
        weights += w
    if not (weights > 0).any():
        return prior
    pooled = np.where(weights > 0, weighted / np.maximum(weights, 1e-300), 0.0)
    stderr = np.where(weights > 0, 1.0 / np.sqrt(np.maximum(weights, 1e-300)), np.inf)
    mean_bin = prior.signal_per_bin[rest]
    trusted = (pooled > SIGNIFICANCE * stderr) & (pooled >= TRUSTED_SHARE * mean_bin)
    if not trusted.any():
        return prior
    bins, efficiency = prior.pixel_bin, prior.efficiency
    eff_sum = np.bincount(bins, weights=efficiency, minlength=n_bins)
    level = np.where(eff_sum[rest] > 0, pooled / np.maximum(eff_sum[rest], 1e-300), 0.0)   # per unit efficiency
    good = np.flatnonzero(trusted)
    # centre side: the first trusted level; between trusted bins: interpolated; outside: the last one
    level = np.interp(np.arange(rest.size), good, level[good])
    per_bin = np.zeros(n_bins)
    per_bin[rest] = level * eff_sum[rest]
    per_bin[:rest[0]] = level[0] * eff_sum[:rest[0]]
    if per_bin.sum() > MAX_SHARE * prior.signal_per_bin.sum():
        return prior
    return BackgroundEstimate(_spread(per_bin, bins, efficiency), prior.q_edges_nm, per_bin,
                              prior.signal_per_bin, prior.proxy_bins, bins, efficiency)


def _spread(per_bin: np.ndarray, pixel_bin: np.ndarray, efficiency: np.ndarray) -> np.ndarray:
    """Bin totals (n_bins,) -> per pixel (P,), in proportion to each pixel's efficiency."""
    eff_sum = np.bincount(pixel_bin, weights=efficiency, minlength=len(per_bin))
    return per_bin[pixel_bin] * efficiency / np.where(eff_sum[pixel_bin] > 0,
                                                        eff_sum[pixel_bin], 1.0)
