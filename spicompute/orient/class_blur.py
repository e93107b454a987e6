"""How blurred a class average is: the orientation spread of its members, fitted against the reference.

A 2D EMC class average is the mean of its member frames, whose orientations spread around
the one the orientation fit finds: the out-of-plane patch of views the class covers and the
in-plane rotation step (and posterior width) of the classification.  The VAE's forward
model of a class average (``vae.class_blur_deg``, :func:`spicompute.vae.train.slice_loss`)
renders that spread as the mean of 7 slices -- the fitted orientation, +-b_out about the lab
x and y axes (out of plane) and +-b_in about z (the beam: in plane); the variance along each
axis is ``2 b^2 / 7``.

This module measures the blur per average with that kernel, out of plane (x, y) and in plane
(z) apart -- a class covers a patch of views several times wider than the in-plane step --
as the pair whose mean reference slice correlates best (the orientation fit's masked Pearson
CC, of I / p) with the average, on a grid refined by a parabola along each axis.  It is a
property of the data (classes per run, frames and photons per class), not a constant.  It
leans on the reference: for averages whose shape the reference does not fit (a sphere has no
orientation at all) b says nothing, so :func:`dataset_blur` takes one pair for the data set
from the averages the reference fits best (highest gain).

Units: degrees; quaternions scalar first, model -> lab (a pattern samples ``I(R^T q)``).
"""

from __future__ import annotations

import numpy as np

from spicompute.errors import InputError

BLUR_GRID_DEG = tuple(float(b) for b in range(0, 21, 2))


def kernel_rotvecs(out_deg: float, in_deg: float | None = None) -> np.ndarray:
    """(7, 3) lab-frame rotation vectors (radians) of the class-average kernel: 0, +-``out_deg`` about the
    detector x and y axes (out of plane) and +-``in_deg`` about the beam z axis (in plane; default
    ``out_deg``)."""
    b_in = out_deg if in_deg is None else in_deg
    unit = np.vstack([np.zeros(3), np.repeat(np.eye(3), 2, axis=0) * np.tile([1.0, -1.0], 3)[:, None]])
    return unit * np.deg2rad(np.array([float(out_deg), float(out_deg), float(b_in)]))[None, :]


def kernel_quaternions(quats: np.ndarray, out_deg: float, in_deg: float | None = None) -> np.ndarray:
    """The kernel's 7 orientations about each of ``quats`` (M, 4): (M, 7, 4), ``delta * q`` (lab frame)."""
    from scipy.spatial.transform import Rotation

    from spicompute.orient.quaternions import canonical, quat_multiply, rotation_to_quat

    delta = rotation_to_quat(Rotation.from_rotvec(kernel_rotvecs(out_deg, in_deg)))  # (7, 4)
    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    return canonical(quat_multiply(delta[None, :, :], q[:, None, :]))


def fit_class_blur(averages, reference, quats: np.ndarray, *, r_min: float, r_max: float, stride: int = 1,
                   normalise: str = "profile", log_floor: float = 0.01, profile_quats: np.ndarray | None = None,
                   grid_deg: tuple[float, ...] = BLUR_GRID_DEG, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per average, the kernel's out-of-plane and in-plane blur (degrees) that best explain it.

    averages : AverageSet (M averages); quats : (M, 4) their fitted orientations;
    profile_quats : orientations over which the reference's radial profile is averaged (default:
    ``quats``).  Every (out, in) pair of ``grid_deg`` is tried; the best is refined by a parabola
    along each axis.  ``normalise`` is the CC's intensity transform (:func:`spicompute.orient.fit.transform`):
    ``profile`` (I / p, linear) by default, because Poisson noise biases a log-intensity CC towards
    sharp models (the log of few counts exaggerates fringe minima; measured in the tests).
    Returns ``blur`` (M, 2) = (out, in) degrees and the CC table (M, G, G).
    """
    from spicompute.orient.fit import _cc_per_average, fit_region, prepare_averages, reference_profile, transform

    quats = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    if len(quats) != averages.n_averages:
        raise InputError("orient", "quaternions", f"{len(quats)} orientations for {averages.n_averages} averages")
    region = fit_region(averages, r_min, r_max, stride)
    prep = prepare_averages(averages, region, normalise, log_floor)
    prof = reference_profile(reference, region, quats if profile_quats is None else profile_quats)
    grid = np.asarray(grid_deg, dtype=np.float64)
    n = grid.size
    p_pix = prof[region.rbin].astype(np.float32)
    cc = np.empty((averages.n_averages, n, n))
    for s in range(0, averages.n_averages, int(batch)):
        e = min(s + int(batch), averages.n_averages)
        # the kernel's mean is (centre + 4 out-of-plane + 2 in-plane slices) / 7, so the sums over each
        # group are sliced once per angle and combined for every (out, in) pair: 1 + 6 G slices, not 7 G^2
        centre = _intensities(reference, region, quats[s:e, None])[:, 0]  # (b, P)
        outer = np.stack([_intensities(reference, region, kernel_quaternions(quats[s:e], b, 0.0)[:, 1:5]).sum(1)
                          for b in grid], axis=1)  # (b, G, P)
        inner = np.stack([_intensities(reference, region, kernel_quaternions(quats[s:e], 0.0, b)[:, 5:]).sum(1)
                          for b in grid], axis=1)  # (b, G, P)
        mean = (centre[:, None, None] + outer[:, :, None] + inner[:, None, :]) / 7.0  # (b, G, G, P)
        sl = transform(mean, p_pix, normalise, np.float32(log_floor)).astype(np.float32, copy=False)
        cc[s:e] = _cc_per_average(prep, s, e, sl.reshape(e - s, n * n, -1)).reshape(e - s, n, n)
    best = np.argmax(cc.reshape(len(cc), -1), axis=1)
    i, j = np.divmod(best, grid.size)
    rows = np.arange(len(cc))
    blur = np.stack([refine_peak(grid, cc[rows, :, j]), refine_peak(grid, cc[rows, i, :])], axis=1)
    return blur, cc


def _intensities(reference, region, quats: np.ndarray) -> np.ndarray:
    """Reference intensities at orientations ``quats`` (b, k, 4) on the fit region: (b, k, P)."""
    from spicompute.orient.slicing import model_coordinates

    b, k = quats.shape[:2]
    return reference.evaluate(model_coordinates(region.q, quats.reshape(-1, 4))).reshape(b, k, -1)


def refine_peak(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each row's maximum of ``values`` (M, G) on the uniform ``grid`` (G,), refined by a parabola
    through the best point and its neighbours (the grid's ends are kept as they are)."""
    grid = np.asarray(grid, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    j = np.argmax(values, axis=1)
    best = grid[j].copy()
    inner = (j > 0) & (j < grid.size - 1)
    rows = np.flatnonzero(inner)
    if rows.size:
        jj = j[rows]
        y0, y1, y2 = values[rows, jj - 1], values[rows, jj], values[rows, jj + 1]
        denom = y0 - 2 * y1 + y2
        shift = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
        best[rows] = grid[jj] + np.clip(shift, -0.5, 0.5) * (grid[1] - grid[0])
    return best


def dataset_blur(blur: np.ndarray, gain: np.ndarray, selected: np.ndarray,
                 top_fraction: float = 0.25) -> tuple[tuple[float, float], dict]:
    """One (out-of-plane, in-plane) blur for the data set: the medians over the selected averages the
    reference fits best.

    blur : (M, 2) per average (:func:`fit_class_blur`); gain : (M,) the orientation fit's gain;
    selected : (M,) bool, the averages the VAE trains on.  The averages with the highest
    ``top_fraction`` of gains among the selected ones are the cube end of the melt family: their
    shape is the reference's, so their blur measures orientation spread, not a shape mismatch.
    Returns ((out, in) degrees, a record of how they were found).
    """
    blur = np.asarray(blur, dtype=np.float64).reshape(len(blur), -1)
    gain = np.asarray(gain, dtype=np.float64)
    pick = np.asarray(selected, bool) & np.isfinite(gain) & np.isfinite(blur).all(axis=1)
    if pick.sum() < 4:
        raise InputError("orient", "blur_out_deg", f"only {int(pick.sum())} selected averages with a finite gain "
                                                   "and blur: cannot estimate the class blur (set vae.class_blur_deg)")
    g = gain[pick]
    top = g >= np.quantile(g, 1.0 - float(top_fraction))
    b = blur[pick][top]
    value = (float(np.median(b[:, 0])), float(np.median(b[:, -1])))
    return value, {"n_used": int(top.sum()), "gain_min": float(g[top].min()),
                   "out_quartiles_deg": [float(v) for v in np.percentile(b[:, 0], [25, 75])],
                   "in_quartiles_deg": [float(v) for v in np.percentile(b[:, -1], [25, 75])]}
