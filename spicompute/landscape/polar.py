"""Polar resampling of 2D patterns on a square grid.

Shared by the common-line CC matrix, the rotation-invariant regressor
features and the orientation fit.  Angles are measured from the +qx axis
(grid column direction) towards +qy (grid row direction); radii in grid
steps from the centre ``c = L // 2``.
"""

from __future__ import annotations

import numpy as np


def polar_sampling(size: int, radii: np.ndarray, n_theta: int, center: float | None = None,
                   theta_range: float = 2 * np.pi):
    """Bilinear interpolation stencil from an ``size x size`` grid to polar bins.

    Returns ``(index, weight)``, each (n_r * n_theta, 4): flat grid indices of
    the four neighbours of every polar bin and their bilinear weights (zero
    for neighbours outside the grid).  Bin ``(ir, it)`` sits at radius
    ``radii[ir]`` and angle ``it * theta_range / n_theta``.
    """
    c = size // 2 if center is None else center
    radii = np.asarray(radii, dtype=np.float64)
    theta = np.arange(n_theta) * (theta_range / n_theta)
    x = c + radii[:, None] * np.cos(theta)[None, :]  # column coordinate
    y = c + radii[:, None] * np.sin(theta)[None, :]  # row coordinate
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = x - x0
    fy = y - y0
    index = np.empty(x.shape + (4,), dtype=np.int64)
    weight = np.empty(x.shape + (4,), dtype=np.float64)
    for n, (dy, dx, w) in enumerate((
        (0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)), (1, 1, fy * fx),
    )):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
        index[..., n] = np.where(inside, yy * size + xx, 0)
        weight[..., n] = np.where(inside, w, 0.0)
    return index.reshape(-1, 4), weight.reshape(-1, 4)


def polar_resample(images: np.ndarray, valid: np.ndarray | None, radii: np.ndarray,
                   n_theta: int, *, theta_range: float = 2 * np.pi,
                   min_coverage: float = 0.5, chunk: int = 256):
    """Resample square images onto a polar grid, honouring masked pixels.

    Parameters
    ----------
    images : (M, L, L) float
    valid : (M, L, L) bool or None (all valid)
    radii : (n_r,) radii in grid steps
    n_theta : number of angle bins over ``theta_range`` radians
    min_coverage : a polar bin is valid when at least this fraction of its
        bilinear weight falls on valid pixels; its value is renormalised over
        the valid neighbours.

    Returns
    -------
    polar : (M, n_r, n_theta) float32
    polar_valid : (M, n_r, n_theta) bool
    """
    images = np.asarray(images)
    m, size, _ = images.shape
    index, weight = polar_sampling(size, radii, n_theta, theta_range=theta_range)
    n_bins = index.shape[0]
    out = np.zeros((m, n_bins), dtype=np.float32)
    out_valid = np.zeros((m, n_bins), dtype=bool)
    flat = images.reshape(m, -1)
    flat_valid = None if valid is None else np.asarray(valid, bool).reshape(m, -1)
    w32 = weight.astype(np.float32)
    for start in range(0, m, chunk):
        block = flat[start:start + chunk].astype(np.float32, copy=False)
        vals = block[:, index]  # (b, n_bins, 4)
        if flat_valid is None:
            wsum = np.broadcast_to(w32.sum(axis=1), (block.shape[0], n_bins))
            num = np.einsum("bnk,nk->bn", vals, w32)
        else:
            vw = flat_valid[start:start + chunk][:, index] * w32  # (b, n_bins, 4)
            wsum = vw.sum(axis=2)
            num = np.einsum("bnk,bnk->bn", vals, vw)
        ok = wsum >= min_coverage
        out[start:start + chunk] = np.where(ok, num / np.maximum(wsum, 1e-12), 0.0)
        out_valid[start:start + chunk] = ok
    shape = (m, len(radii), n_theta)
    return out.reshape(shape), out_valid.reshape(shape)


def friedel_fold(polar: np.ndarray, polar_valid: np.ndarray):
    """Average each angle bin with the bin pi away (small-angle Friedel symmetry).

    Input spans 2 pi in ``n_theta`` (even) bins; output spans pi in
    ``n_theta // 2`` bins.  A folded bin is valid when either half is.
    """
    n_theta = polar.shape[-1]
    if n_theta % 2:
        raise ValueError("Friedel folding needs an even number of angle bins over 2 pi")
    half = n_theta // 2
    a, b = polar[..., :half], polar[..., half:]
    va, vb = polar_valid[..., :half], polar_valid[..., half:]
    count = va.astype(np.float32) + vb
    folded = (a * va + b * vb) / np.maximum(count, 1)
    return folded.astype(np.float32), count > 0


def mean_radial_profile(polar: np.ndarray, polar_valid: np.ndarray) -> np.ndarray:
    """Mean over averages and angles of the valid bins at each radius, (n_r,).

    Radii with no valid bin get the nearest defined value, so dividing by the
    profile never divides by zero.
    """
    total = np.where(polar_valid, polar, 0).sum(axis=(0, 2), dtype=np.float64)
    count = polar_valid.sum(axis=(0, 2))
    profile = np.full(polar.shape[1], np.nan)
    defined = count > 0
    profile[defined] = total[defined] / count[defined]
    profile[defined & (profile <= 0)] = np.nan
    good = np.isfinite(profile)
    if not good.any():
        return np.ones(polar.shape[1])
    idx = np.arange(len(profile))
    return np.interp(idx, idx[good], profile[good])
