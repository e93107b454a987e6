"""Slicing 3D intensity volumes on rotated Ewald-sphere q-points.

A frame taken at orientation R (quaternion, scalar first, model->lab)
samples the model intensity at ``R^T q`` for each lab-frame pixel q.
Volumes are cubic grids ``(L, L, L)`` indexed (x, y, z) with q = 0 at index
``L // 2`` and a step of ``dq_nm`` rad/nm.  Interpolation is trilinear
(torch ``grid_sample``, multithreaded); points outside the grid read 0.
"""

from __future__ import annotations

import numpy as np
import torch

from spicompute.orient.quaternions import rotation_matrices


def model_coordinates(q_lab: np.ndarray, quaternions: np.ndarray) -> np.ndarray:
    """Model-frame coordinates ``R^T q`` of lab q-points for each orientation.

    q_lab : (P, 3); quaternions : (N, 4)  ->  (N, P, 3) float32
    """
    mats = rotation_matrices(quaternions).astype(np.float32)
    q = np.asarray(q_lab, dtype=np.float32)
    # (R^T q)_i = sum_j R_ji q_j  ->  q @ R  for row vectors
    return np.einsum("pj,nji->npi", q, mats, optimize=True)


class VolumeSampler:
    """Trilinear sampler of one intensity volume (kept as a torch tensor).

    volume : (L, L, L) float, axes (x, y, z), q = 0 at index L // 2
    dq_nm : grid step, rad/nm
    """

    def __init__(self, volume: np.ndarray, dq_nm: float):
        vol = np.ascontiguousarray(volume, dtype=np.float32)
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise ValueError(f"volume must be a cube (L, L, L), got {vol.shape}")
        self.size = vol.shape[0]
        self.dq_nm = float(dq_nm)
        self.center = self.size // 2
        # grid_sample wants (N, C, D, H, W) with grid[..., 0] indexing W:
        # store (x, y, z) as (D, H, W) and pass coordinates in order (z, y, x).
        self._volume = torch.from_numpy(vol)[None, None]

    @property
    def q_max_nm(self) -> float:
        """Largest |q_i| along every axis that the grid covers."""
        return (self.size - 1 - self.center) * self.dq_nm

    def __call__(self, q_model: np.ndarray) -> np.ndarray:
        """Intensity at model-frame q-points (..., 3) rad/nm -> (...) float32."""
        q = torch.as_tensor(np.asarray(q_model, dtype=np.float32))
        shape = q.shape[:-1]
        idx = q.reshape(-1, 3) / self.dq_nm + self.center
        norm = idx * (2.0 / (self.size - 1)) - 1.0
        grid = norm[:, [2, 1, 0]].reshape(1, -1, 1, 1, 3)
        with torch.no_grad():
            out = torch.nn.functional.grid_sample(self._volume, grid, mode="bilinear",
                                                  padding_mode="zeros", align_corners=True)
        return out.reshape(shape).numpy()

    def slices(self, q_lab: np.ndarray, quaternions: np.ndarray,
               scale: np.ndarray | None = None) -> np.ndarray:
        """Ewald slices ``I(s R^T q)`` at N orientations, (N, P) float32.

        The rotation, size factor, grid step and centring are folded into one
        (3 x 3) matrix per orientation, so the grid coordinates of all pixels
        come from a single batched matmul, and ``grid_sample`` runs batched
        (parallel over orientations) on the shared, non-copied volume.
        """
        mats = rotation_matrices(quaternions).astype(np.float32)  # (N, 3, 3)
        n = mats.shape[0]
        s = np.ones(n, np.float32) if scale is None else np.asarray(scale, np.float32)
        to_grid = 2.0 / ((self.size - 1) * self.dq_nm)
        # row vector q @ R = (R^T q)^T; reorder output axes to (z, y, x) for grid_sample
        mats = mats[:, :, [2, 1, 0]] * (s * to_grid)[:, None, None]
        offset = self.center * 2.0 / (self.size - 1) - 1.0
        q = torch.from_numpy(np.ascontiguousarray(q_lab, dtype=np.float32))
        with torch.no_grad():
            grid = torch.matmul(q, torch.from_numpy(np.ascontiguousarray(mats))) + offset
            out = torch.nn.functional.grid_sample(
                self._volume.expand(n, 1, -1, -1, -1), grid.view(n, -1, 1, 1, 3),
                mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.view(n, -1).numpy()


def slice_volume(volume: np.ndarray, dq_nm: float, q_lab: np.ndarray,
                 quaternions: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Ewald slices of a volume at several orientations.

    q_lab : (P, 3) lab-frame pixel q; quaternions : (N, 4)
    scale : optional (N,) size factors s: the particle is s times larger, so
        its intensity is ``s^6 I(s q)``.
    Returns (N, P) float32.
    """
    out = VolumeSampler(volume, dq_nm).slices(q_lab, quaternions, scale)
    if scale is not None:
        out *= np.asarray(scale, dtype=np.float32)[:, None] ** 6
    return out
