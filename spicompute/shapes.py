"""Particle shapes and their 3D diffracted intensity |F(q)|^2.

Closed forms where they exist (cube, sphere), and for any other shape the
FFT of an anti-aliased voxel density (superellipsoid melt family, dimers,
rods).  Lengths in nm, q in rad/nm; intensities are |F|^2 with F the
Fourier transform of a unit-density particle (units nm^6).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy.special import gamma


def cube_intensity(q: np.ndarray, edge_nm: float) -> np.ndarray:
    """|F|^2 of an axis-aligned cube of edge ``a`` centred at the origin.

    ``F(q) = a^3 sinc(qx a/2) sinc(qy a/2) sinc(qz a/2)``: zeros along a face
    normal at ``q = 2 pi m / a``.

    q : (..., 3) rad/nm  ->  (...) nm^6 (float32 if q is float32, else float64)
    """
    q = np.asarray(q)
    dtype = np.float32 if q.dtype == np.float32 else np.float64  # float32 in -> float32 math
    q = q.astype(dtype, copy=False)
    scale = dtype(0.5 * edge_nm / np.pi)  # np.sinc(x) = sin(pi x) / (pi x)
    amp = np.sinc(q[..., 0] * scale) * np.sinc(q[..., 1] * scale) * np.sinc(q[..., 2] * scale)
    amp *= dtype(edge_nm**3)
    return amp * amp


def sphere_intensity(q: np.ndarray, radius_nm: float) -> np.ndarray:
    """|F|^2 of a sphere of radius R: ``F = 3V (sin x - x cos x) / x^3``, x = qR.

    Zeros where tan(qR) = qR: qR = 4.493, 7.725, ...

    q : (..., 3) rad/nm  ->  (...) nm^6
    """
    q = np.asarray(q, dtype=np.float64)
    x = np.linalg.norm(q, axis=-1) * radius_nm
    volume = 4.0 / 3.0 * np.pi * radius_nm**3
    small = x < 1e-3
    xs = np.where(small, 1.0, x)
    form = 3.0 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    form = np.where(small, 1.0 - x * x / 10.0, form)
    amp = volume * form
    return amp * amp


def superellipsoid_exponent(t: float) -> float:
    """Exponent p of ``|x|^p + |y|^p + |z|^p <= r^p`` along the melt parameter t.

    ``1/p = t/2``: t = 0 is the cube (p = inf), t = 1 the sphere (p = 2),
    t = 0.25 a rounded cube (p = 8).
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"melt parameter t must lie in [0, 1], got {t}")
    return np.inf if t == 0 else 2.0 / t


def superellipsoid_volume_factor(p: float) -> float:
    """Volume of ``|x|^p+|y|^p+|z|^p <= 1`` (8 for the cube p = inf, 4pi/3 for p = 2)."""
    if np.isinf(p):
        return 8.0
    return 8.0 * gamma(1.0 + 1.0 / p) ** 3 / gamma(1.0 + 3.0 / p)


def melt_half_size(t: float, cube_edge_nm: float, volume_growth: float) -> float:
    """Half-size r of the melt-family member at t.

    Its volume is ``a^3 (1 + volume_growth * t)``: the molten end is larger,
    as the paper's particles were (Fig. 5D).
    """
    p = superellipsoid_exponent(t)
    volume = cube_edge_nm**3 * (1.0 + volume_growth * t)
    return float((volume / superellipsoid_volume_factor(p)) ** (1.0 / 3.0))


def superellipsoid_intensity_volume(size: int, dq_nm: float, oversample: int,
                                    half_size_nm: float, p: float) -> np.ndarray:
    """|F|^2 of a superellipsoid on a cubic q-grid, via the FFT of its density.

    The q-grid has ``size^3`` points of step ``dq_nm`` with q = 0 at
    ``size // 2``.  The real-space grid has ``n = size * oversample`` voxels of
    edge ``2 pi / (n dq_nm)``; the surface is anti-aliased with the distance to
    it estimated from the (degree-1 homogeneous) p-norm.  Returns
    (size, size, size) float32 in nm^6.
    """
    n = size * oversample
    dx = 2 * np.pi / (n * dq_nm)
    axis = (np.arange(n) - n // 2) * dx
    xp = np.abs(axis / half_size_nm).astype(np.float32) ** np.float32(p)
    density = np.empty((n, n, n), dtype=np.float32)
    for i in range(n):  # slab by slab to bound memory (vectorised per slab)
        norm = (xp[i] + xp[:, None] + xp[None, :]) ** np.float32(1.0 / p)
        density[i] = np.clip(0.5 - (norm - 1.0) * (half_size_nm / dx), 0.0, 1.0)
    return intensity_volume(density, dx, keep=size)


def intensity_volume(density: np.ndarray, dx_nm: float, keep: int | None = None) -> np.ndarray:
    """|F(q)|^2 on the FFT grid of a real-space density, origin at the centre.

    density : (n, n, n) unit density on voxels of edge dx_nm (nm)
    keep : edge of the central q-region to return (crop); default all n.

    Returns (keep, keep, keep) float32 in nm^6 with q = 0 at index keep // 2
    and q step ``2 pi / (n dx_nm)``.  Axis order (x, y, z).
    """
    n = density.shape[0]
    amp = scipy.fft.fftn(scipy.fft.ifftshift(density.astype(np.complex64)), workers=-1)
    inten = scipy.fft.fftshift((amp * np.conj(amp)).real).astype(np.float32)
    inten *= np.float32(dx_nm**6)
    if keep is None or keep >= n:
        return inten
    lo = n // 2 - keep // 2
    return np.ascontiguousarray(inten[lo:lo + keep, lo:lo + keep, lo:lo + keep])
