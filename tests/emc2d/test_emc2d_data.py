"""Synthetic 2D data for the emc2d tests: blob templates at random in-plane rotations."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spicompute.geometry import regular_detector, standard_mask
from spicompute.io.frames import FrameSet

# blob templates: (amplitude, x, y, width) in pixel units from the centre
TEMPLATES = [
    [(1.0, 6.0, 0.0, 2.5), (0.7, -4.0, 7.0, 2.0), (0.5, -7.0, -6.0, 3.0)],
    [(1.0, 0.0, 9.0, 2.0), (0.9, 0.0, -9.0, 2.0), (0.6, 8.0, 3.0, 2.5)],
    [(1.0, 11.0, 0.0, 3.0), (0.5, -3.0, -3.0, 1.5), (0.4, 2.0, 12.0, 2.0)],
]


def template_intensity(t: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Template t at positions (x, y) in pixel units, plus a smooth radial background."""
    out = 0.3 * np.exp(-(x**2 + y**2) / (2 * 10.0**2))
    for amp, bx, by, w in TEMPLATES[t]:
        out = out + amp * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * w * w))
    return out


def make_detector(size: int = 41):
    center = ((size - 1) / 2, (size - 1) / 2)
    mask = standard_mask((size, size), center, beamstop_radius_px=1.5, gap_width_px=2,
                         gap_axis="vertical")
    return regular_detector((size, size), wavelength_nm=0.2, distance_mm=700.0,
                            pixel_size_mm=0.4, mask=mask)


def pixel_xy(det):
    """Detector pixels' transverse q in units of the grid step (= pixel units)."""
    return det.q_perp[:, 0] / det.dq_nm, det.q_perp[:, 1] / det.dq_nm


def make_frames(n_frames: int = 300, photons: float = 500.0, n_templates: int = 3,
                size: int = 41, seed: int = 1, fluence_spread: float = 0.3):
    """Poisson frames of random templates at uniformly random in-plane rotations.

    Returns (FrameSet, labels (N,), angles (N,) radians, fluence (N,)).
    The frame samples I_t(Rot(angle)^T q) (the template turned by +angle).
    """
    rng = np.random.default_rng(seed)
    det = make_detector(size)
    x, y = pixel_xy(det)
    labels = rng.integers(0, n_templates, n_frames)
    angles = rng.uniform(0, 2 * np.pi, n_frames)
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    xr = c * x[None] + s * y[None]
    yr = -s * x[None] + c * y[None]
    inten = np.zeros((n_frames, x.size))
    for t in range(n_templates):
        sel = labels == t
        inten[sel] = template_intensity(t, xr[sel], yr[sel])
    inten *= det.mask[None]
    fluence = rng.uniform(1 - fluence_spread, 1 + fluence_spread, n_frames)
    inten *= (photons * fluence / inten.sum(axis=1))[:, None]
    counts = rng.poisson(inten).astype(np.int32)
    fs = FrameSet(sp.csr_matrix(counts), np.arange(n_frames), det)
    return fs, labels, angles, fluence


def best_rotation_cc(model: np.ndarray, weight: np.ndarray, t: int, n_angles: int = 180,
                     radius: float | None = None) -> float:
    """Max over rotations of the Pearson CC between a model grid (L, L) and template t."""
    L = model.shape[0]
    c = L // 2
    jj, ii = np.meshgrid(np.arange(L) - c, np.arange(L) - c)
    x, y = jj.astype(float), ii.astype(float)
    good = weight > 0
    if radius is not None:
        good &= x**2 + y**2 <= radius**2
    ang = 2 * np.pi * np.arange(n_angles) / n_angles
    ca, sa = np.cos(ang)[:, None], np.sin(ang)[:, None]
    xs, ys = x[good][None], y[good][None]
    ref = template_intensity(t, ca * xs + sa * ys, -sa * xs + ca * ys)  # (A, n)
    m = model[good] - model[good].mean()
    ref = ref - ref.mean(axis=1, keepdims=True)
    cc = ref @ m / (np.linalg.norm(ref, axis=1) * np.linalg.norm(m) + 1e-30)
    return float(cc.max())
