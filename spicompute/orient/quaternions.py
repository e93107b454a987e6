"""Quaternions and rotations."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def quat_to_rotation(quaternions: np.ndarray) -> Rotation:
    """scipy Rotation from (N, 4) scalar-first quaternions."""
    q = np.asarray(quaternions, dtype=np.float64).reshape(-1, 4)
    return Rotation.from_quat(q[:, [1, 2, 3, 0]])


def rotation_to_quat(rotation: Rotation) -> np.ndarray:
    """(N, 4) scalar-first quaternions with w >= 0 from a scipy Rotation."""
    q = np.atleast_2d(rotation.as_quat())[:, [3, 0, 1, 2]]
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) uniformly distributed random orientations (Haar measure on SO(3))."""
    g = rng.standard_normal((n, 4))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    g *= np.where(g[:, :1] < 0, -1.0, 1.0)
    return g


def rotation_matrices(quaternions: np.ndarray) -> np.ndarray:
    """(N, 3, 3) rotation matrices of scalar-first quaternions."""
    return quat_to_rotation(quaternions).as_matrix()


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a b`` of scalar-first quaternions, broadcasting (..., 4)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """Inverse of unit quaternions (..., 4)."""
    q = np.array(q, dtype=np.float64, copy=True)
    q[..., 1:] *= -1.0
    return q


def canonical(q: np.ndarray) -> np.ndarray:
    """Unit quaternions with ``w >= 0`` (q and -q are the same rotation), (..., 4)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return q * np.where(q[..., :1] < 0, -1.0, 1.0)
