"""Dragonfly photon files (HDF5 ``.emc``) and detector files.

Photon file (Dragonfly's sparse layout, one entry per frame)::

    num_pix      (1,)  int32   pixels per frame
    place_ones   (N,)  vlen int32   pixels with exactly one photon
    place_multi  (N,)  vlen int32   pixels with more than one photon
    count_multi  (N,)  vlen int32   their counts

Detector file::

    qx, qy, qz  (P,) float64  in Dragonfly voxel units: q_voxel = q / dq_voxel
    corr        (P,) float64  polarisation x solid angle
    mask        (P,) uint8    0 good, 1 used for merging only, 2 bad
                              (1 -> ``Detector.merge_only``: 2D EMC merges these pixels
                              without fitting them, as Dragonfly does; set
                              ``classify2d.merge_only: false`` to drop them)
    detd        ()   float64  detector distance in pixels
    ewald_rad   ()   float64  Ewald-sphere radius in voxels (= k / dq_voxel)

Dragonfly does not record the wavelength, so turning voxel units into rad/nm
needs it from the user (``data.wavelength_nm``): ``q = q_voxel * k / ewald_rad``
with ``k = 2 pi / lambda``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from spicompute.errors import InputError
from spicompute.geometry import Detector, wavenumber
from spicompute.io.frames import FrameSet, open_h5
from spicompute.io.h5check import check_stored
from spicompute.io.provenance import atomic_path, stamp

log = logging.getLogger("spicompute.io.dragonfly")

PHOTON_KEYS = ("num_pix", "place_ones", "place_multi", "count_multi")


def is_dragonfly_photons(h5: h5py.File) -> bool:
    return all(key in h5 for key in PHOTON_KEYS)


def read_dragonfly_detector(path: str | Path, wavelength_nm: float | None) -> Detector:
    """Detector geometry from a Dragonfly detector file, q in rad/nm."""
    if wavelength_nm is None or not np.isfinite(wavelength_nm) or wavelength_nm <= 0:
        raise InputError(path, "wavelength",
                         "Dragonfly detector files carry no wavelength; set data.wavelength_nm")
    with open_h5(path) as h5:
        arrays = {}
        for key in ("qx", "qy", "qz", "corr", "mask"):
            if key not in h5:
                raise InputError(path, key, "dataset missing (not a Dragonfly detector file?)")
            arrays[key] = np.asarray(h5[key][()]).reshape(-1)
        n = arrays["qx"].shape[0]
        for key, arr in arrays.items():
            if arr.shape != (n,):
                raise InputError(path, key, f"has {arr.shape[0]} entries, qx has {n}")
            if not np.all(np.isfinite(arr)):
                raise InputError(path, key, "contains NaN or Inf")
        if "ewald_rad" not in h5:
            raise InputError(path, "ewald_rad", "dataset missing")
        ewald_rad = float(np.asarray(h5["ewald_rad"][()]).reshape(-1)[0])
        detd = float(np.asarray(h5["detd"][()]).reshape(-1)[0]) if "detd" in h5 else np.nan
    if ewald_rad <= 0:
        raise InputError(path, "ewald_rad", f"must be > 0, got {ewald_rad}")
    scale = wavenumber(wavelength_nm) / ewald_rad
    q = np.stack([arrays["qx"], arrays["qy"], arrays["qz"]], axis=1) * scale
    side = int(round(np.sqrt(n)))
    shape = (side, side) if side * side == n else None
    # mask 1: Dragonfly's "merge only" pixels (not in the likelihood, merged into the models)
    det = Detector(q=q, mask=arrays["mask"] == 0, solid_angle=arrays["corr"],
                   polarization=np.ones(n), wavelength_nm=float(wavelength_nm),
                   shape=shape, center=None, merge_only=arrays["mask"] == 1)
    det.extra["dragonfly_mask"] = arrays["mask"].astype(np.uint8)
    det.extra["detd_px"] = detd
    return det


def _vlen(h5: h5py.File, key: str, n: int, path) -> list:
    data = h5[key]
    if not isinstance(data, h5py.Dataset) or data.shape != (n,):
        raise InputError(path, key, f"must have one entry per frame ({n}), got "
                                    f"{getattr(data, 'shape', 'a group')}")
    base = h5py.check_vlen_dtype(data.dtype)
    if base is None or np.dtype(base).kind not in "iu":
        raise InputError(path, key, f"must be variable-length integer lists, got dtype {data.dtype}")
    check_stored(data, path, key)  # a shape claiming 10^8 frames that are not there: fail now
    return list(data[()])


def read_dragonfly_photons(path: str | Path, detector_path: str | Path,
                           wavelength_nm: float | None) -> FrameSet:
    """Frames from a Dragonfly photon file plus its detector file."""
    det = read_dragonfly_detector(detector_path, wavelength_nm)
    with open_h5(path) as h5:
        if not is_dragonfly_photons(h5):
            missing = [k for k in PHOTON_KEYS if k not in h5]
            raise InputError(path, missing[0], "dataset missing (not a Dragonfly photon file?)")
        num_pix = int(np.asarray(h5["num_pix"][()]).reshape(-1)[0])
        if num_pix != det.n_pixels:
            raise InputError(path, "num_pix",
                             f"{num_pix} pixels but detector {detector_path} has {det.n_pixels}")
        n = h5["place_ones"].shape[0] if h5["place_ones"].ndim == 1 else -1
        ones = _vlen(h5, "place_ones", n, path)
        multi = _vlen(h5, "place_multi", n, path)
        cmulti = _vlen(h5, "count_multi", n, path)
    n_ones = np.fromiter((len(a) for a in ones), dtype=np.int64, count=n)
    n_multi = np.fromiter((len(a) for a in multi), dtype=np.int64, count=n)
    if not np.array_equal(n_multi, np.fromiter((len(a) for a in cmulti), np.int64, count=n)):
        raise InputError(path, "count_multi", "lengths differ from place_multi")
    cat = (lambda parts: np.concatenate(parts).astype(np.int64)) if n else \
        (lambda parts: np.zeros(0, np.int64))
    pix = np.concatenate([cat(ones), cat(multi)]) if n else np.zeros(0, np.int64)
    cnt = np.concatenate([np.ones(n_ones.sum(), np.int64), cat(cmulti)]) if n else pix
    rows = np.concatenate([np.repeat(np.arange(n), n_ones), np.repeat(np.arange(n), n_multi)])
    if len(pix) and (pix.min() < 0 or pix.max() >= num_pix):
        raise InputError(path, "place_ones/place_multi", f"pixel index outside 0..{num_pix - 1}")
    if len(cnt) and cnt.min() < 1:
        raise InputError(path, "count_multi", "counts must be >= 1")
    counts = sp.csr_matrix((cnt, (rows, pix)), shape=(n, num_pix), dtype=np.int64)
    counts.sum_duplicates()
    return FrameSet(counts=counts.astype(np.int32), frame_id=np.arange(n), detector=det)


def write_dragonfly_photons(path: str | Path, frames: FrameSet) -> None:
    """Write frames in Dragonfly's photon layout (atomically)."""
    csr = frames.counts.tocsr()
    csr.sort_indices()
    vint = h5py.vlen_dtype(np.int32)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5["num_pix"] = np.array([frames.n_pixels], dtype=np.int32)
        n = frames.n_frames
        ones = h5.create_dataset("place_ones", (n,), dtype=vint)
        multi = h5.create_dataset("place_multi", (n,), dtype=vint)
        cmulti = h5.create_dataset("count_multi", (n,), dtype=vint)
        ones_list, multi_list, cmulti_list = [], [], []
        for start, stop in zip(csr.indptr[:-1], csr.indptr[1:]):  # vlen rows need a list
            idx = csr.indices[start:stop]
            val = csr.data[start:stop]
            ones_list.append(idx[val == 1].astype(np.int32))
            multi_list.append(idx[val > 1].astype(np.int32))
            cmulti_list.append(val[val > 1].astype(np.int32))
        ones[...] = np.array(ones_list + [None], dtype=object)[:-1]
        multi[...] = np.array(multi_list + [None], dtype=object)[:-1]
        cmulti[...] = np.array(cmulti_list + [None], dtype=object)[:-1]
        h5["ones"] = np.array([len(a) for a in ones_list], dtype=np.int32)
        h5["multi"] = np.array([len(a) for a in multi_list], dtype=np.int32)


def write_dragonfly_detector(path: str | Path, detector: Detector) -> None:
    """Write a Dragonfly detector file; 1 voxel = the detector's q spacing ``dq_nm``."""
    dq = detector.dq_nm
    k = wavenumber(detector.wavelength_nm)
    mask = detector.extra.get("dragonfly_mask")
    if mask is None:
        mask = np.where(detector.mask, 0, 2).astype(np.uint8)
        if detector.merge_only is not None:
            mask[detector.merge_only] = 1
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        for i, key in enumerate(("qx", "qy", "qz")):
            h5[key] = detector.q[:, i] / dq
        h5["corr"] = detector.solid_angle * detector.polarization
        h5["mask"] = mask
        h5["ewald_rad"] = k / dq
        detd = detector.distance_mm / detector.pixel_size_mm
        h5["detd"] = detd if np.isfinite(detd) else k / dq
        stamp(h5, "export-dragonfly")
