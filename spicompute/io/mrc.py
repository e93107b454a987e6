"""MRC volumes for ChimeraX / Chimera / cryo-EM tools.

Our volumes are ``(L, L, L)`` arrays indexed (x, y, z) with the origin at
voxel ``L // 2``; MRC stores sections along z, rows along y, columns along x
(numpy order ``[z, y, x]``), so arrays are transposed on the way in and out.
The header carries the voxel size and the origin in Å, as ChimeraX expects:
the voxel ``L // 2`` sits at the coordinate origin.

- real-space densities: voxel size = ``dx_nm`` x 10 Å;
- reciprocal-space intensities: voxel size = ``dq_nm`` / 10 in rad/Å (MRC has
  no unit field: a label says so, and ChimeraX shows the grid in those units).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spicompute.errors import InputError
from spicompute.io.provenance import atomic_path

ANGSTROM_PER_NM = 10.0


def write_mrc(path: str | Path, volume: np.ndarray, voxel_size: float, label: str = "") -> None:
    """Write a centred (x, y, z) volume as float32 MRC (atomically).

    volume : (L, L, L), origin at voxel L // 2
    voxel_size : header voxel size (Å for densities, rad/Å for intensities)
    label : one header label (<= 80 characters), e.g. what the values are
    """
    import mrcfile

    vol = np.asarray(volume, np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"volume must be (L, L, L), got {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise ValueError("volume contains NaN or Inf")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ValueError(f"voxel size must be > 0, got {voxel_size!r}")
    size = vol.shape[0]
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))
            mrc.voxel_size = float(voxel_size)
            origin = -(size // 2) * float(voxel_size)
            mrc.header.origin = (origin, origin, origin)
            if label:
                mrc.add_label(label[:80])
            mrc.update_header_stats()


def read_mrc(path: str | Path) -> tuple[np.ndarray, float, tuple[float, float, float]]:
    """(volume (L, L, L) indexed (x, y, z), voxel size, origin (x, y, z)) of an MRC file."""
    import mrcfile

    try:
        with mrcfile.open(path, permissive=False) as mrc:
            data = np.asarray(mrc.data, np.float32).transpose(2, 1, 0).copy()
            voxel = float(mrc.voxel_size.x)
            origin = tuple(float(v) for v in (mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z))
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (ValueError, OSError) as exc:
        raise InputError(path, None, f"not a readable MRC file ({exc})") from None
    return data, voxel, origin
