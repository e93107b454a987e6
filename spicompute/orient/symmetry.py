"""The octahedral point group Oh acting on centred cubic voxel grids.

Oh has 48 elements: every signed permutation of the three axes (6 axis
permutations x 8 sign patterns).  On a cubic grid of odd edge ``L`` whose
centre voxel ``L // 2`` is the origin, each element maps voxels onto voxels,
so it acts *exactly* as an axis transpose plus flips -- no interpolation.
The 24 elements of determinant +1 are the proper rotations of the cube
(group O); the other 24 include the inversion ``x -> -x``, which for an
intensity volume is Friedel symmetry ``I(q) = I(-q)``.

Symmetrising a volume means averaging it over all 48 images.  Because Oh is
the semidirect product of the sign flips (an abelian group of 8) and the 6
permutations, that mean is computed as "average with the flip" along each
axis in turn (3 cheap steps, equal to the mean over the 8 sign patterns)
followed by the mean over the 6 transposes: 9 tensor operations instead of 48.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from spicompute.orient.quaternions import rotation_to_quat


def cube_group() -> np.ndarray:
    """The 24 proper rotations of the cube (group O), (24, 4) scalar first.

    Order is scipy's ``Rotation.create_group("O")`` (identity at index 3);
    the fundamental-zone tie rule refers to this order.
    """
    return rotation_to_quat(Rotation.create_group("O"))


#: the 6 permutations of the axes (x, y, z) -> (x, y, z)[perm]
AXIS_PERMUTATIONS: tuple[tuple[int, int, int], ...] = tuple(itertools.permutations(range(3)))
#: the 8 sign patterns
SIGN_PATTERNS: tuple[tuple[int, int, int], ...] = tuple(itertools.product((1, -1), repeat=3))


def oh_operations() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The 48 elements of Oh as ``(perm, signs)``.

    The element maps a vector ``v`` to ``w`` with ``w[i] = signs[i] * v[perm[i]]``.
    """
    return [(perm, signs) for perm in AXIS_PERMUTATIONS for signs in SIGN_PATTERNS]


def operation_matrix(perm, signs) -> np.ndarray:
    """3x3 matrix M of an element: ``w = M v`` with ``w[i] = signs[i] v[perm[i]]``."""
    m = np.zeros((3, 3))
    m[np.arange(3), list(perm)] = signs
    return m


def oh_matrices() -> np.ndarray:
    """(48, 3, 3) matrices of Oh in :func:`oh_operations` order."""
    return np.stack([operation_matrix(p, s) for p, s in oh_operations()])


def octahedral_matrices(proper_only: bool = False) -> np.ndarray:
    """Signed 3x3 permutation matrices of Oh (48) or of O (the 24 with det +1), (G, 3, 3), in
    :func:`oh_operations` order."""
    mats = oh_matrices()
    return mats[np.linalg.det(mats) > 0] if proper_only else mats


def apply_operation(volume, perm, signs):
    """Image of a volume under one element: ``V'(M x) = V(x)``, i.e. ``V' = V o M^-1``.

    volume : (..., L, L, L) numpy array or torch tensor on a centred odd grid,
        axes (x, y, z) last.
    Returns an array of the same shape and type.
    """
    is_torch = isinstance(volume, torch.Tensor)
    nd = volume.ndim
    lead = list(range(nd - 3))
    # V'(w) = V(M^-1 w); w_i = s_i v_perm(i) -> v_perm(i) = s_i w_i: output axis i reads input axis perm(i)
    axes = lead + [nd - 3 + p for p in perm]
    out = volume.permute(*axes) if is_torch else np.transpose(volume, axes)
    flip = [nd - 3 + i for i in range(3) if signs[i] < 0]
    if flip:
        out = torch.flip(out, flip) if is_torch else np.flip(out, flip)
    return out


def symmetrize_oh(volume):
    """Mean of a volume over the 48 elements of Oh (exact on a centred odd grid).

    volume : (..., L, L, L) torch tensor (differentiable) or numpy array.
    The result is invariant under every element of Oh and symmetrising it
    again changes nothing (idempotent).
    """
    if volume.shape[-1] % 2 == 0 or len(set(volume.shape[-3:])) != 1:
        raise ValueError(f"Oh symmetrisation needs a cubic grid of odd edge, got {tuple(volume.shape[-3:])}")
    is_torch = isinstance(volume, torch.Tensor)
    nd = volume.ndim
    out = volume
    for axis in range(nd - 3, nd):  # mean over the 8 sign patterns, one axis at a time
        flipped = torch.flip(out, [axis]) if is_torch else np.flip(out, axis)
        out = 0.5 * (out + flipped)
    lead = list(range(nd - 3))
    images = []
    for perm in AXIS_PERMUTATIONS:
        axes = lead + [nd - 3 + p for p in perm]
        images.append(out.permute(*axes) if is_torch else np.transpose(out, axes))
    if is_torch:
        return torch.stack(images, 0).mean(0)
    return np.mean(np.stack(images, 0), axis=0)
