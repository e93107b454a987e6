"""Views of 3D volumes for people: central sections, projections, display downsampling.

Pure functions used by the dashboard's Volumes page and the export stage (and usable in notebooks).
Volumes are ``(L, L, L)`` grids indexed (x, y, z) with the origin at voxel
``L // 2``.  Directions are crystallographic-style axes of the cube frame:
``<100>`` = (0, 0, 1), ``<110>`` = (1, 1, 0)/sqrt 2, ``<111>`` = (1, 1, 1)/sqrt 3.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

DIRECTIONS = {"<100>": (0.0, 0.0, 1.0), "<110>": (1.0, 1.0, 0.0), "<111>": (1.0, 1.0, 1.0)}


def frame_for(direction) -> np.ndarray:
    """(3, 3) orthonormal rows (u, v, n) with n along ``direction`` (right-handed)."""
    n = np.asarray(direction, dtype=np.float64)
    n = n / np.linalg.norm(n)
    helper = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(helper, n)
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    return np.stack([u, v, n])


def central_section(volume: np.ndarray, direction) -> np.ndarray:
    """(L, L) section through the origin perpendicular to ``direction`` (trilinear), in voxel steps.

    Pixel (i, j) is the point ``(j - c) u + (i - c) v`` with (u, v, n) from :func:`frame_for`.
    Points outside the grid read 0.
    """
    size = volume.shape[0]
    c = size // 2
    u, v, _ = frame_for(direction)
    a = np.arange(size) - c
    pts = a[None, :, None] * u + a[:, None, None] * v + c  # (L, L, 3) voxel coordinates
    return ndimage.map_coordinates(np.asarray(volume, np.float64), pts.transpose(2, 0, 1), order=1,
                                   mode="constant", cval=0.0)


def projection(density: np.ndarray, direction) -> np.ndarray:
    """(L, L) line integral of a real-space density along ``direction`` (sum of voxels).

    The density is resampled (trilinear) on a grid rotated so that ``direction``
    becomes the line of sight, then summed along it; for <100> this is exactly
    the sum over the z axis.
    """
    frame = frame_for(direction)
    if np.allclose(frame[2], [0.0, 0.0, 1.0]):
        # the same pixel layout as the general path: rows along v = x, columns along u = -y
        return np.asarray(density, np.float64).sum(axis=2)[:, ::-1]
    size = density.shape[0]
    c = (size - 1) / 2.0
    # output voxel (i, j, k) -> input point c + (j - c) u + (i - c) v + (k - c) n
    matrix = np.stack([frame[1], frame[0], frame[2]], axis=1)
    offset = c - matrix @ np.full(3, c)
    rotated = ndimage.affine_transform(np.asarray(density, np.float64), matrix, offset=offset, order=1,
                                       mode="constant", cval=0.0)
    return rotated.sum(axis=2)


def block_mean(volume: np.ndarray, max_edge: int = 64) -> tuple[np.ndarray, int]:
    """Downsample by block means so that the edge is <= ``max_edge``; returns (volume, factor)."""
    size = volume.shape[0]
    factor = int(np.ceil(size / max_edge))
    if factor <= 1:
        return np.asarray(volume), 1
    edge = size // factor
    lo = (size - edge * factor) // 2
    cut = np.asarray(volume)[lo:lo + edge * factor, lo:lo + edge * factor, lo:lo + edge * factor]
    return cut.reshape(edge, factor, edge, factor, edge, factor).mean(axis=(1, 3, 5)), factor


def log_display(values: np.ndarray, decades: float = 4.0) -> np.ndarray:
    """log10 with a floor ``decades`` below the 99.9th percentile of the positive values."""
    values = np.asarray(values, np.float64)
    pos = values[values > 0]
    top = np.percentile(pos, 99.9) if pos.size else 1.0
    return np.log10(np.maximum(values, top * 10.0 ** -decades))


def quantize_uint8(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Values scaled to 0..255 uint8 with (lo, hi) to undo it: v = lo + q (hi - lo) / 255."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    span = hi - lo if hi > lo else 1.0
    return np.round((values - lo) / span * 255).astype(np.uint8), lo, hi
