"""Differentiable Ewald-sphere slicing of a batch of 3D volumes (torch).

Same convention as :class:`spicompute.orient.slicing.VolumeSampler` (and so as the
orientation fit): volumes are ``(L, L, L)`` grids indexed (x, y, z) with
q = 0 at index ``L // 2`` and step ``dq_nm``; a pattern taken at rotation R
(model -> lab) samples ``I(R^T q)`` at its lab-frame q-points; trilinear
interpolation, zero outside the grid.  Here every volume of the batch has its
own rotation and gradients flow to the volumes (``grid_sample`` backward).
"""

from __future__ import annotations

import torch


def slice_volumes(volumes: torch.Tensor, dq_nm: float, q_lab: torch.Tensor,
                  rotations: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Slice volume b at rotation b: ``out[b, p] = V_b(R_b^T q_p)``; or at T rotations each.

    volumes : (B, L, L, L) float tensor
    dq_nm : voxel step, rad/nm
    q_lab : (P, 3) lab-frame q-points, rad/nm (the Ewald points of the 2D grid)
    rotations : (B, 3, 3) model->lab rotation matrices, or (B, T, 3, 3): T slices of each volume
        in one call (one gradient buffer per volume instead of T)
    padding : outside the grid, ``zeros`` or ``border`` (the nearest face value)
    Returns (B, P), or (B, T, P).
    """
    b, size = volumes.shape[0], volumes.shape[-1]
    center = size // 2
    to_grid = 2.0 / ((size - 1) * dq_nm)
    offset = center * 2.0 / (size - 1) - 1.0
    # row vector q @ R = (R^T q)^T; grid_sample takes coordinates in (z, y, x) order
    mats = rotations.to(volumes.dtype)[..., [2, 1, 0]] * to_grid
    grid = torch.matmul(q_lab.to(volumes.dtype), mats) + offset  # (B, [T,] P, 3)
    out = torch.nn.functional.grid_sample(volumes[:, None], grid.reshape(b, -1, 1, 1, 3), mode="bilinear",
                                          padding_mode=padding, align_corners=True)
    return out.view(grid.shape[:-1])
