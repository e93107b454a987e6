"""Reading Dragonfly 2D classification output (``output_NNN.h5``, ``recon_type = 2d``).

Dragonfly stores the K 2D models as ``intens`` (K, L, L) indexed ``[k, x, y]``
with ``x`` along qx and ``y`` along qy in voxel units, centre ``L // 2``
(its ``slice_gen2d`` samples ``model[x * L + y]`` at ``Rot(theta) q_voxel +
centre``, ``Rot(theta) = [[cos, -sin], [sin, cos]]``).  Our averages grid is
indexed ``[i, j]`` with ``i`` along qy and ``j`` along qx and the same
centre, so an average is ``intens[k].T``.  The grid step is one voxel:
``dq = k_wave / ewald_rad`` rad/nm (``ewald_rad`` from the detector file,
``k_wave = 2 pi / lambda``; Dragonfly does not record lambda).

Per frame: ``orientations`` (N,) is the most likely (rotation, mode) pair
as ``r * num_modes + mode``; the in-plane angle theta_r is column 0 of
``quaternions`` (radians).  A Dragonfly frame samples ``M(Rot(theta) q)``,
i.e. ``M(Rot(-theta)^T q)``: in our convention (frame samples
``M(Rot(alpha)^T q)``) the rotation is ``alpha = -theta``.
``occupancies`` (N, K) is each frame's posterior summed over rotations.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.geometry import wavenumber
from spicompute.io.averages import AverageSet
from spicompute.io.frames import open_h5


def _ewald_rad(detector_path: str | Path) -> float:
    with open_h5(detector_path) as h5:
        if "ewald_rad" not in h5:
            raise InputError(detector_path, "ewald_rad", "dataset missing (not a Dragonfly "
                                                         "detector file?)")
        value = float(np.asarray(h5["ewald_rad"][()]).reshape(-1)[0])
    if not (np.isfinite(value) and value > 0):
        raise InputError(detector_path, "ewald_rad", f"must be > 0, got {value}")
    return value


def read_dragonfly2d(path: str | Path, detector_path: str | Path, wavelength_nm: float | None,
                     run: int = 0) -> tuple[AverageSet, pd.DataFrame]:
    """Averages and per-frame table from a Dragonfly 2D output file.

    Parameters
    ----------
    path : Dragonfly ``output_NNN.h5`` of a 2D reconstruction.
    detector_path : the Dragonfly detector file used (for ``ewald_rad``).
    wavelength_nm : the X-ray wavelength, nm (not stored by Dragonfly).
    run : bootstrap run number given to these averages (``average_id =
        run * K + model``).

    Returns
    -------
    (AverageSet with ``source = "dragonfly"``, frames table with columns
    ``frame_id, run, average_id, rotation_deg, posterior_max, scale``;
    ``posterior_max`` is the frame's largest per-model occupancy).
    """
    if wavelength_nm is None:
        raise ParameterError("wavelength_nm", "Dragonfly files do not record the wavelength; "
                             "give it (--wavelength-nm)")
    if not (np.isfinite(wavelength_nm) and wavelength_nm > 0):
        raise ParameterError("wavelength_nm", f"must be > 0, got {wavelength_nm!r}")
    with open_h5(path) as h5:
        if "intens" not in h5:
            raise InputError(path, "intens", "dataset missing (not a Dragonfly output file?)")
        if h5["intens"].dtype.kind not in "fiu":
            raise InputError(path, "intens", f"must be numbers, got dtype {h5['intens'].dtype}")
        intens = np.asarray(h5["intens"][()], dtype=np.float64)
        if intens.ndim != 3 or intens.shape[1] != intens.shape[2]:
            raise InputError(path, "intens",
                             f"must be (K, L, L) 2D models (recon_type 2d), got {intens.shape}")
        if not np.all(np.isfinite(intens)):
            raise InputError(path, "intens", "contains NaN or Inf")
        if intens.min(initial=0) < 0:
            raise InputError(path, "intens", "negative intensities (photon counts per pixel are >= 0)")
        K = intens.shape[0]
        if "inter_weight" in h5 and h5["inter_weight"].dtype.kind not in "fiu":
            raise InputError(path, "inter_weight", "must be a numeric dataset")
        weight = np.asarray(h5["inter_weight"][()], np.float64) if "inter_weight" in h5 \
            else (intens > 0).astype(np.float64)
        if weight.shape != intens.shape:
            raise InputError(path, "inter_weight", f"shape {weight.shape} differs from intens")
        for key in ("occupancies", "orientations", "scale", "quaternions"):
            if key not in h5:
                raise InputError(path, key, "dataset missing")
            if not isinstance(h5[key], h5py.Dataset) or h5[key].dtype.kind not in "fiu":
                raise InputError(path, key, "must be a numeric dataset")
        occ = np.asarray(h5["occupancies"][()], np.float64)
        orient = np.asarray(h5["orientations"][()], np.int64).reshape(-1)
        scale = np.asarray(h5["scale"][()], np.float64).reshape(-1)
        angles = np.asarray(h5["quaternions"][()], np.float64)
    n = orient.shape[0]
    if occ.ndim == 1 and K == 1:
        occ = occ[:, None]
    if occ.shape != (n, K):
        raise InputError(path, "occupancies", f"must be ({n}, {K}), got {occ.shape}")
    if scale.shape != (n,):
        raise InputError(path, "scale", f"must have {n} entries, got {scale.shape}")
    n_rot = angles.shape[0]
    if orient.size and (orient.min() < 0 or orient.max() >= n_rot * K):
        raise InputError(path, "orientations", f"values outside 0..{n_rot * K - 1}")
    dq = wavenumber(wavelength_nm) / _ewald_rad(detector_path)
    averages = AverageSet(
        intensity=intens.transpose(0, 2, 1).astype(np.float32),
        weight=weight.transpose(0, 2, 1).astype(np.float32),
        average_id=run * K + np.arange(K), run=np.full(K, run), model=np.arange(K),
        n_frames=occ.sum(axis=0), dq_nm=dq, wavelength_nm=wavelength_nm, source="dragonfly")
    theta = angles[orient // K, 0]
    table = pd.DataFrame({
        "frame_id": np.arange(n, dtype=np.int64), "run": np.full(n, run, np.int64),
        "average_id": run * K + orient % K,
        "rotation_deg": np.mod(-np.degrees(theta), 360.0),
        "posterior_max": occ.max(axis=1), "scale": scale})
    return averages, table
