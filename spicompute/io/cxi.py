"""CXI files (Coherent X-ray Imaging format, HDF5) — reading and writing.

Read::

    entry_1/data_1/data                       (N, rows, cols) photon counts
    entry_1/instrument_1/detector_1/
        distance          m
        x_pixel_size      m    (fast scan, columns)
        y_pixel_size      m    (slow scan, rows)
        corner_position   (3,) m, position of pixel (0, 0)'s corner; its z is the distance
        basis_vectors     (2, 3) m per pixel: [slow-scan (row) step, fast-scan (col) step]
        mask              (rows, cols) or (N, rows, cols) CXI mask bits
    entry_1/instrument_1/source_1/energy      J    (or)
    entry_1/instrument_1/source_1/wavelength  m

Pixel (i, j) centre = corner_position + (i + 1/2) ss + (j + 1/2) fs.
Without basis vectors, ss = (0, y_pixel_size, 0), fs = (x_pixel_size, 0, 0);
without a corner position the detector is centred on the beam.  Also
accepted: the geometry under ``entry_1/data_1/`` via soft links, as many
writers do, since h5py resolves them.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from spicompute.errors import InputError
from spicompute.geometry import Detector, wavenumber
from spicompute.io.provenance import atomic_path, stamp

DATA = "entry_1/data_1/data"
DET = "entry_1/instrument_1/detector_1"
SOURCE = "entry_1/instrument_1/source_1"
PLANCK_C_J_M = 6.62607015e-34 * 299792458.0  # h c in J m

# CXI pixel mask bits that make a pixel unusable (0x20 "peak mask" is not one).
CXI_BAD_BITS = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200


def is_cxi(h5: h5py.File) -> bool:
    return DATA in h5


def _scalar(h5, key, path, required=True):
    if key not in h5:
        if required:
            raise InputError(path, key, "dataset missing")
        return None
    try:
        value = np.asarray(h5[key][()], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(path, key, f"must be one number, got {h5[key][()]!r}") from None
    if value.size != 1 or not np.isfinite(value[0]):
        raise InputError(path, key, f"must be one finite number, got {value[:3]}")
    return float(value[0])


def read_cxi_geometry(h5: h5py.File, path, frame_shape: tuple[int, int],
                      wavelength_nm: float | None = None) -> tuple[Detector, np.ndarray | None]:
    """Detector of a CXI file (q in rad/nm) and its raw mask (or None)."""
    rows, cols = frame_shape
    wl_m = _scalar(h5, f"{SOURCE}/wavelength", path, required=False)
    energy_j = _scalar(h5, f"{SOURCE}/energy", path, required=False)
    if wl_m is not None:
        if wl_m <= 0:
            raise InputError(path, f"{SOURCE}/wavelength", f"must be > 0, got {wl_m}")
        wavelength = wl_m * 1e9
    elif energy_j is not None:
        if energy_j <= 0:
            raise InputError(path, f"{SOURCE}/energy", f"must be > 0, got {energy_j}")
        wavelength = PLANCK_C_J_M / energy_j * 1e9
    elif wavelength_nm:
        wavelength = float(wavelength_nm)
    else:
        raise InputError(path, f"{SOURCE}/energy",
                         "no energy or wavelength in the file; set data.wavelength_nm")
    distance = _scalar(h5, f"{DET}/distance", path, required=False)
    corner = h5[f"{DET}/corner_position"][()] if f"{DET}/corner_position" in h5 else None
    if distance is None and corner is None:
        raise InputError(path, f"{DET}/distance", "dataset missing (and no corner_position)")
    if f"{DET}/basis_vectors" in h5:
        basis = np.asarray(h5[f"{DET}/basis_vectors"][()], dtype=np.float64)
        if basis.shape != (2, 3):
            raise InputError(path, f"{DET}/basis_vectors", f"must be (2, 3), got {basis.shape}")
        ss, fs = basis
    else:
        px = _scalar(h5, f"{DET}/x_pixel_size", path)
        py = _scalar(h5, f"{DET}/y_pixel_size", path, required=False) or px
        ss, fs = np.array([0.0, py, 0.0]), np.array([px, 0.0, 0.0])
    if corner is None:
        corner = -(rows / 2.0) * ss - (cols / 2.0) * fs + np.array([0.0, 0.0, distance])
    corner = np.asarray(corner, dtype=np.float64).reshape(-1)
    if corner.shape != (3,):
        raise InputError(path, f"{DET}/corner_position", f"must have 3 entries, got {corner.shape}")
    if distance is None:
        distance = corner[2]
    if not distance > 0:
        raise InputError(path, f"{DET}/distance", f"must be > 0, got {distance}")
    ii, jj = np.meshgrid(np.arange(rows) + 0.5, np.arange(cols) + 0.5, indexing="ij")
    pos = corner + ii[..., None] * ss + jj[..., None] * fs  # (rows, cols, 3) m
    r = np.linalg.norm(pos, axis=-1)
    s = (pos / r[..., None]).reshape(-1, 3)
    q = wavenumber(wavelength) * (s - np.array([0.0, 0.0, 1.0]))
    area = np.linalg.norm(np.cross(ss, fs))
    solid = (area * np.abs(pos[..., 2]) / r**3).reshape(-1)
    polarization = 1.0 - s[:, 0] ** 2  # horizontal (x) polarisation, as at XFELs
    mask_raw = h5[f"{DET}/mask"][()] if f"{DET}/mask" in h5 else None
    good = np.ones(rows * cols, dtype=bool)
    if mask_raw is not None:
        if mask_raw.shape[-2:] != (rows, cols):
            raise InputError(path, f"{DET}/mask",
                             f"shape {mask_raw.shape} does not match frames {rows}x{cols}")
        bad = (np.asarray(mask_raw).astype(np.int64) & CXI_BAD_BITS) != 0
        good = ~(bad.reshape(-1, rows * cols).any(axis=0))
    pitch = float(np.sqrt(area)) * 1e3
    normal_center = None
    denom = np.cross(ss, fs)[2]
    if abs(denom) > 0:  # where the beam (x = y = 0) hits the panel, in pixels
        a = np.array([[ss[0], fs[0]], [ss[1], fs[1]]])
        try:
            ij = np.linalg.solve(a, -corner[:2])
            normal_center = (float(ij[0] - 0.5), float(ij[1] - 0.5))
        except np.linalg.LinAlgError:
            normal_center = None
    det = Detector(q=q, mask=good, solid_angle=solid, polarization=polarization,
                   wavelength_nm=float(wavelength), distance_mm=float(distance) * 1e3,
                   pixel_size_mm=pitch, shape=(rows, cols), center=normal_center)
    return det, mask_raw


def write_cxi(path: str | Path, counts: np.ndarray, detector: Detector) -> None:
    """Write frames (N, rows, cols) and a regular detector as a CXI file."""
    counts = np.asarray(counts)
    write_cxi_blocks(path, [counts], len(counts), detector, dtype=counts.dtype)


def write_cxi_blocks(path: str | Path, blocks, n_frames: int, detector: Detector, dtype=np.int32) -> None:
    """Write ``n_frames`` frames arriving as blocks (n_b, P) or (n_b, rows, cols) as a CXI file.

    Memory is one block: large selections are read and written block by block.
    """
    if detector.shape is None or detector.center is None:
        raise ValueError("CXI export needs a regular detector with a centre")
    rows, cols = detector.shape
    pitch_m = detector.pixel_size_mm * 1e-3
    cy, cx = detector.center
    distance_m = detector.distance_mm * 1e-3
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, "export-cxi")
        h5.attrs["cxi_version"] = 160
        data = h5.create_dataset(DATA, shape=(n_frames, rows, cols), dtype=dtype, compression="gzip",
                                 shuffle=True, chunks=(1, rows, cols))
        done = 0
        for block in blocks:
            block = np.asarray(block).reshape(-1, rows, cols)
            data[done:done + len(block)] = block
            done += len(block)
        if done != n_frames:
            raise ValueError(f"got {done} frames, expected {n_frames}")
        g = h5[DET] if DET in h5 else h5.create_group(DET)
        g["distance"] = distance_m
        g["x_pixel_size"] = pitch_m
        g["y_pixel_size"] = pitch_m
        g["corner_position"] = np.array([-(cx + 0.5) * pitch_m, -(cy + 0.5) * pitch_m, distance_m])
        g["basis_vectors"] = np.array([[0.0, pitch_m, 0.0], [pitch_m, 0.0, 0.0]])
        g["mask"] = np.where(detector.mask, 0, 0x1).astype(np.uint16).reshape(rows, cols)
        src = h5.create_group(SOURCE)
        src["energy"] = PLANCK_C_J_M / (detector.wavelength_nm * 1e-9)
        src["wavelength"] = detector.wavelength_nm * 1e-9
