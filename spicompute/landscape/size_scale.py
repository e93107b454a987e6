"""Relative particle size of each average, from the fringe spacing of its radial profile.

Two particles of one shape and sizes a and a·s scatter I_s(q) ∝ I_1(s q): the
pattern of the larger one is the smaller one's, compressed in q by s.  Every
average's azimuthal-mean profile p_i(r) is compared with a reference profile
p_ref(r s) over a grid of s, on the *fringe pattern* (log profile minus its
straight-line trend in log r, so the Porod fall-off, the fluence and the
particle's scattering power do not count), and s_i is the s of the best
correlation (refined by a parabola in log s).  The reference is the median of
the usable averages' profiles, each first brought to s = 1 with its current
estimate (two passes), and the s are normalised to median 1 over the usable
averages.

``s_i > 1``: average ``i`` comes from particles larger than the typical one
(its fringes lie at smaller q).  The estimate is good to ~1 % on bright
averages of one shape; it is the fringe spacing, so an anisotropic particle
seen along different axes gets slightly different s (a 42 nm cube along a face
and along a body diagonal differ by a few %).

Used two ways (docs/ccmatrix_embed.md, "Size spread"): ``embed`` reports how
each landscape axis follows s (a size axis is not a shape axis), and
``ccmatrix.size_normalise`` resamples every average at r / s_i before the
common lines, so that the CC compares shape at a common size.
"""

from __future__ import annotations

import numpy as np

from spicompute.errors import ParameterError

MAX_FACTOR = 1.25     # s searched in [1 / MAX_FACTOR, MAX_FACTOR]
N_GRID = 61           # log-spaced trial s
MIN_BINS = 6          # radii a comparison needs
LOCAL_FACTOR = 1.1     # refinement searched within this factor of the current s
FLOOR = 0.1           # fringe minima lifted to this share of the trend (:func:`fringe_pattern`)


def radial_profiles(lines: np.ndarray, lines_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal mean of each average's folded lines.

    lines, lines_valid : (M, n_lines, n_r) raw intensity and validity (:func:`~spicompute.landscape.commonlines.polar_lines`)
    Returns profiles (M, n_r) float64 and their validity (M, n_r) bool (some line valid there).
    """
    v = np.asarray(lines_valid, bool)
    n = v.sum(axis=1)
    total = np.where(v, lines, 0.0).sum(axis=1, dtype=np.float64)
    return total / np.maximum(n, 1), n > 0


def _weighted_detrend(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y minus its weighted least-squares line in x, per row; 0 where w is 0.  y, w: (M, n); x: (n,)."""
    sw = w.sum(1, keepdims=True)
    sw = np.maximum(sw, 1e-30)
    mx = (w * x).sum(1, keepdims=True) / sw
    my = (w * y).sum(1, keepdims=True) / sw
    dx = x - mx
    slope = (w * dx * (y - my)).sum(1, keepdims=True) / np.maximum((w * dx * dx).sum(1, keepdims=True), 1e-30)
    return np.where(w > 0, y - my - slope * dx, 0.0)


def _fringe_correlation(log_prof: np.ndarray, ok: np.ndarray, ref_at: np.ndarray, ref_ok: np.ndarray,
                        log_r: np.ndarray) -> np.ndarray:
    """Correlation of each row's fringe pattern with the reference's (both detrended on the common bins)."""
    w = (ok & ref_ok[None, :]).astype(np.float64)
    a = _weighted_detrend(np.where(ok, log_prof, 0.0), log_r, w)
    b = _weighted_detrend(np.broadcast_to(np.where(ref_ok, ref_at, 0.0), a.shape), log_r, w)
    num = (a * b).sum(1)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1)) + 1e-30
    c = num / den
    return np.where(w.sum(1) >= MIN_BINS, c, -2.0)


def fringe_pattern(profiles: np.ndarray, ok: np.ndarray, log_r: np.ndarray, floor: float = FLOOR) -> np.ndarray:
    """log(p / trend + floor): the profile over its power-law trend (a line in log-log), with the
    fringe minima lifted to ``floor`` of the trend so that a near-zero of a sharp fringe (a sphere's)
    does not outweigh the rest.  (M, n_r); 0 where not ``ok``."""
    lp = np.log(np.where(ok, profiles, 1.0))
    rel = _weighted_detrend(lp, log_r, ok.astype(np.float64))
    return np.where(ok, np.log(np.exp(np.minimum(rel, 50.0)) + floor), 0.0)


def fringe_frequency(pattern: np.ndarray, ok: np.ndarray, pad: int = 16) -> np.ndarray:
    """Dominant oscillation frequency (cycles per radial sample) of each row's fringe pattern:
    the peak of its windowed, zero-padded Fourier spectrum above 1.5 cycles over the range.
    (M,) float64, NaN where a row has too few valid samples."""
    m, n = pattern.shape
    y = np.where(ok, pattern - (pattern * ok).sum(1, keepdims=True) / np.maximum(ok.sum(1, keepdims=True), 1), 0.0)
    y = y * np.hanning(n)[None, :]
    spec = np.abs(np.fft.rfft(y, n=pad * n, axis=1))
    freq = np.fft.rfftfreq(pad * n)
    spec[:, freq < 1.5 / n] = 0.0
    k = spec.argmax(1)
    inner = (k > 0) & (k < spec.shape[1] - 1)
    kk = np.where(inner, k, 1)
    y0, y1, y2 = (spec[np.arange(m), kk + d] for d in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    off = np.where(inner & (den < 0), 0.5 * (y0 - y2) / np.where(den < 0, den, -1.0), 0.0)
    f = (k + off) / (pad * n)
    return np.where((ok.sum(1) >= MIN_BINS) & (f > 0), f, np.nan)


def fit_size_scales(profiles: np.ndarray, profiles_ok: np.ndarray, radii: np.ndarray,
                    usable: np.ndarray | None = None, *, max_factor: float = MAX_FACTOR,
                    n_grid: int = N_GRID, passes: int = 2) -> np.ndarray:
    """Relative size s_i of every average (see the module docstring).

    profiles, profiles_ok : (M, n_r) from :func:`radial_profiles`
    radii : (n_r,) increasing radii (grid steps) of the profile samples
    usable : (M,) bool, the averages that make the reference (default all);
        the others get s too, but do not shape the reference or the median
    Returns (M,) float64, median 1 over ``usable``.
    """
    radii = np.asarray(radii, np.float64)
    if radii.ndim != 1 or len(radii) < MIN_BINS or np.any(np.diff(radii) <= 0) or radii[0] <= 0:
        raise ParameterError("ccmatrix.q_min_nm", f"a size fit needs >= {MIN_BINS} increasing radii > 0, "
                             f"got {len(radii)} from {radii[:1]}")
    if not max_factor > 1:
        raise ValueError(f"max_factor must be > 1, got {max_factor}")
    prof = np.asarray(profiles, np.float64)
    ok = np.asarray(profiles_ok, bool) & (prof > 0)
    m = prof.shape[0]
    usable = np.ones(m, bool) if usable is None or not np.any(usable) else np.asarray(usable, bool)
    log_r = np.log(radii)
    log_prof = fringe_pattern(prof, ok, log_r)
    grid = np.exp(np.linspace(-np.log(max_factor), np.log(max_factor), n_grid))
    step = np.log(grid[1] / grid[0])
    # start: the dominant fringe frequency over r (proportional to size), so that the first
    # reference is made of averages brought roughly to one size
    s = fringe_frequency(log_prof, ok)
    good = usable & np.isfinite(s)
    s = np.where(np.isfinite(s), s / np.median(s[good]) if good.any() else 1.0, 1.0)
    s = np.clip(s, grid[0], grid[-1])
    for _ in range(passes):
        # reference: median of the usable profiles brought to s = 1 (p_ref(r) = p_i(r / s_i))
        aligned = np.full((m, len(radii)), np.nan)
        for i in np.flatnonzero(usable & (ok.sum(1) >= 2)):
            rr = radii / s[i]
            inside = (rr >= radii[ok[i]][0]) & (rr <= radii[ok[i]][-1])
            aligned[i, inside] = np.interp(rr[inside], radii[ok[i]], log_prof[i, ok[i]])
        with np.errstate(all="ignore"):
            ref = np.nanmedian(aligned[usable], axis=0) if usable.any() else np.full(len(radii), np.nan)
        ref_ok_grid = np.isfinite(ref)
        if ref_ok_grid.sum() < MIN_BINS:
            return np.ones(m)
        rk = radii[ref_ok_grid]
        scores = np.empty((m, n_grid))
        for g, factor in enumerate(grid):            # p_i(r) against p_ref(r s)
            rr = radii * factor
            ref_ok = (rr >= rk[0]) & (rr <= rk[-1])
            scores[:, g] = _fringe_correlation(log_prof, ok, np.interp(rr, rk, ref[ref_ok_grid]), ref_ok, log_r)
        # search near the current estimate (one fringe skipped is a wrong local maximum)
        near = np.abs(np.log(grid)[None, :] - np.log(s)[:, None]) <= np.log(LOCAL_FACTOR)
        scores = np.where(near, scores, -3.0)
        k = scores.argmax(1)
        log_s = np.log(grid[k])
        inner = (k > 0) & (k < n_grid - 1)
        rows = np.flatnonzero(inner)
        # refine only where both neighbours were searched (not outside the window or unscored)
        rows = rows[(scores[rows, k[rows] - 1] > -2) & (scores[rows, k[rows] + 1] > -2)]
        y0, y1, y2 = scores[rows, k[rows] - 1], scores[rows, k[rows]], scores[rows, k[rows] + 1]
        den = y0 - 2 * y1 + y2
        off = np.where(den < 0, 0.5 * (y0 - y2) / np.where(den < 0, den, -1.0), 0.0)
        log_s[rows] += np.clip(off, -0.5, 0.5) * step
        s = np.exp(log_s - np.median(log_s[usable]))
    return s


def size_scales(lines: np.ndarray, lines_valid: np.ndarray, radii: np.ndarray,
                usable: np.ndarray | None = None, **kw) -> np.ndarray:
    """:func:`fit_size_scales` on the raw folded lines of every average."""
    prof, ok = radial_profiles(lines, lines_valid)
    return fit_size_scales(prof, ok, radii, usable, **kw)


def scaled_polar_lines(intensity: np.ndarray, valid: np.ndarray | None, radii: np.ndarray,
                       scales: np.ndarray, n_lines: int, *, min_coverage: float = 0.5,
                       quantum: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """Folded lines of every average sampled at r / s_i: each average brought to the common size.

    Averages are grouped by s rounded to ``quantum`` in log s (0.5 %: well below a radial
    step at the outer radii), one :func:`~spicompute.landscape.commonlines.polar_lines`
    call per group.  A radius that falls outside the grid is invalid.

    intensity, valid : (M, L, L); radii : (n_r,) grid steps; scales : (M,)
    Returns lines (M, n_lines, n_r) float32 and their validity (M, n_lines, n_r) bool.
    """
    from spicompute.landscape.commonlines import polar_lines

    m, size = intensity.shape[0], intensity.shape[-1]
    radii = np.asarray(radii, np.float64)
    scales = np.asarray(scales, np.float64)
    if scales.shape != (m,) or not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError(f"scales must be ({m},) finite and > 0")
    r_max = size // 2 - 1 + 0.5 * (size % 2)
    lines = np.zeros((m, n_lines, len(radii)), np.float32)
    lvalid = np.zeros((m, n_lines, len(radii)), bool)
    key = np.round(np.log(scales) / quantum).astype(np.int64)
    for v in np.unique(key):
        idx = np.flatnonzero(key == v)
        rr = radii / np.exp(v * quantum)
        inside = rr <= r_max
        part, pvalid = polar_lines(intensity[idx], None if valid is None else valid[idx],
                                   np.minimum(rr, r_max), n_lines, min_coverage=min_coverage)
        pvalid[..., ~inside] = False
        lines[idx], lvalid[idx] = part, pvalid
    return lines, lvalid
