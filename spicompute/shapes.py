"""Particle shapes, their scattering amplitude F(q) and intensity |F(q)|^2.

Closed forms where they exist (cube, box/rod, sphere), evaluated at any
q-point.  The superellipsoids between cube and sphere (the melt family) have
no closed form: :func:`superellipsoid_amplitude_grid` integrates the density
semi-analytically (exactly along z, cell-exact cosines in x and y) on a
positive-octant q-grid; being centrosymmetric and mirror-symmetric these
shapes have a real amplitude that is even in each q component, so the octant
holds all of it.  :func:`superellipsoid_intensity_volume` (FFT of a voxel
density) is kept as an independent cross-check.

Lengths in nm, q in rad/nm; F is the Fourier transform of a unit-density
particle (nm^3), intensities |F|^2 (nm^6).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
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


def cube_amplitude(q: np.ndarray, edge_nm: float) -> np.ndarray:
    """Real amplitude ``a^3 sinc(qx a/2) sinc(qy a/2) sinc(qz a/2)`` of a centred cube.

    q : (..., 3) rad/nm  ->  (...) nm^3 (float32 for float32 q, else float64)
    """
    return box_amplitude(q, (0.5 * edge_nm,) * 3)


def box_amplitude(q: np.ndarray, half_sizes_nm) -> np.ndarray:
    """Real amplitude ``prod_i 2 h_i sinc(q_i h_i)`` of a centred box of half-sizes h.

    q : (..., 3) rad/nm; half_sizes_nm : (hx, hy, hz) nm  ->  (...) nm^3, in q's float dtype
    (:func:`box_amplitude_torch`).
    """
    q = np.asarray(q)
    dtype = np.float32 if q.dtype == np.float32 else np.float64
    return box_amplitude_torch(torch.as_tensor(q.astype(dtype, copy=False)),
                               [float(v) for v in half_sizes_nm]).numpy()


def sphere_form(x: np.ndarray) -> np.ndarray:
    """Sign-carrying sphere form factor ``3 (sin x - x cos x) / x^3`` (1 at x = 0).

    x = q R (dimensionless), any shape, float64 (:func:`sphere_form_torch`).
    """
    return sphere_form_torch(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


def sphere_amplitude(q: np.ndarray, radius_nm: float) -> np.ndarray:
    """Real amplitude ``V 3 (sin x - x cos x)/x^3`` (x = |q| R) of a centred sphere.

    q : (..., 3) rad/nm  ->  (...) float64 nm^3
    """
    x = np.linalg.norm(np.asarray(q, dtype=np.float64), axis=-1) * radius_nm
    return 4.0 / 3.0 * np.pi * radius_nm**3 * sphere_form(x)


def sphere_intensity(q: np.ndarray, radius_nm: float) -> np.ndarray:
    """|F|^2 of a sphere of radius R: ``F = 3V (sin x - x cos x) / x^3``, x = qR.

    Zeros where tan(qR) = qR: qR = 4.493, 7.725, ...

    q : (..., 3) rad/nm  ->  (...) nm^6
    """
    return sphere_amplitude(q, radius_nm) ** 2


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


def superellipsoid_diameter(half_size_nm: float, p: float) -> float:
    """Largest extent (diameter of the circumscribed sphere) of ``|x|^p+|y|^p+|z|^p <= r^p``.

    For p >= 2 the farthest points lie on the body diagonals:
    ``2 r sqrt(3) / 3^(1/p)`` (2 sqrt(3) r for the cube, 2 r for the sphere), nm.
    """
    if p < 2:
        raise ValueError(f"exponent p must be >= 2, got {p}")
    third = 0.0 if np.isinf(p) else 1.0 / p
    return float(2.0 * half_size_nm * np.sqrt(3.0) / 3.0**third)


def _cell_cosine(q: np.ndarray, centres: np.ndarray, width: float) -> np.ndarray:
    """(len(q), len(centres)) exact integrals of cos(q x) over cells of ``width``.

    ``int_{c - w/2}^{c + w/2} cos(q x) dx = w cos(q c) sinc(q w / 2 pi)``.
    """
    return width * np.cos(np.outer(q, centres)) * np.sinc(q * (width / (2 * np.pi)))[:, None]


def superellipsoid_amplitude_grid(n_q: int, dq_nm: float, half_size_nm: float, p: float,
                                  cells: int = 192) -> np.ndarray:
    """Real amplitude F of ``|x|^p+|y|^p+|z|^p <= r^p`` on the positive q-octant.

    Grid point (i, j, k) is ``q = (i, j, k) * dq_nm`` for 0 <= i, j, k < n_q;
    F is even in each component, so ``F(qx, qy, qz) = grid(|qx|, |qy|, |qz|)``.

    The density is integrated over the positive octant,
    ``F = 8 int cos(qx x) cos(qy y) int_0^{r h(x,y)} cos(qz z) dz dx dy`` with
    ``h = (1 - (x/r)^p - (y/r)^p)^(1/p)``: the z-integral is exact
    (``r h sinc(qz r h / pi)``), and x, y run over ``cells`` x ``cells`` squares
    of edge r / cells with h taken at the cell centre and cos integrated exactly
    over each cell (exact for the cube, p = inf).  Cost two matrix products of
    (n_q * cells) x cells x n_q.  Returns (n_q, n_q, n_q) float32 in nm^3,
    axes (x, y, z).
    """
    r = float(half_size_nm)
    u = (np.arange(cells) + 0.5) / cells
    if np.isinf(p):
        h = np.ones((cells, cells))
    else:
        up = u**p
        h = np.clip(1.0 - up[:, None] - up[None, :], 0.0, None) ** (1.0 / p)  # (x, y)
    q = np.arange(n_q) * dq_nm
    width = r / cells
    c = _cell_cosine(q, u * r, width).astype(np.float32)  # (n_q, cells): q, x
    zh = r * h  # (x, y) z half-extents of the cells
    ct = torch.from_numpy(c)
    out = np.empty((n_q, n_q, n_q), dtype=np.float32)  # (x, y, z)
    step = max(1, (1 << 22) // (cells * cells))  # qz planes per batch (bounds memory)
    with torch.no_grad():
        for k0 in range(0, n_q, step):
            qz = q[k0:k0 + step, None, None]
            sz = torch.from_numpy((zh * np.sinc(qz * zh / np.pi)).astype(np.float32))
            # F[qz, qx, qy] = sum_xy C[qx, x] sz[qz, x, y] C[qy, y]   (torch: BLAS-threaded)
            plane = torch.matmul(torch.matmul(ct, sz), ct.T)
            out[:, :, k0:k0 + step] = plane.permute(1, 2, 0).numpy()
    out *= np.float32(8.0)
    return out


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


# --- torch amplitudes: the simulator evaluates them batched at model-frame points ----------------

def box_amplitude_torch(q: torch.Tensor, half) -> torch.Tensor:
    """Real amplitude of a centred box of half-sizes ``half`` (nm) at q (..., 3)."""
    amp = torch.sinc(q[..., 0] * (half[0] / np.pi))  # torch.sinc(x) = sin(pi x) / (pi x)
    amp *= torch.sinc(q[..., 1] * (half[1] / np.pi))
    amp *= torch.sinc(q[..., 2] * (half[2] / np.pi))
    return amp * float(8.0 * half[0] * half[1] * half[2])


def sphere_form_torch(x: torch.Tensor) -> torch.Tensor:
    """3 (sin x - x cos x) / x^3 in the dtype of x, with its series below x = 0.3.

    (In float32 the closed form's cancellation costs ~1e-6 relative at x = 0.3;
    the 4-term series is exact to 5e-11 there.)
    """
    xs = torch.clamp(x, min=0.3)
    out = torch.sin(xs).sub_(xs * torch.cos(xs)).mul_(3.0).div_(xs * xs * xs)
    small = x < 0.3  # a few pixels near the beam: the series only there
    if bool(small.any()):
        x2 = x[small] ** 2
        out[small] = 1.0 + x2 * (-1.0 / 10.0 + x2 * (1.0 / 280.0 - x2 / 15120.0))
    return out


def sphere_amplitude_torch(q: torch.Tensor, radius: float) -> torch.Tensor:
    """Real amplitude of a centred sphere of radius ``radius`` (nm) at q (..., 3), nm^3."""
    x = torch.linalg.vector_norm(q, dim=-1) * radius
    return sphere_form_torch(x) * float(4.0 / 3.0 * np.pi * radius**3)
