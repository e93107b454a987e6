"""The frames file: photon counts + detector geometry (our HDF5 layout).

Layout (all groups at the file root; units in attributes)::

    /frames/frame_id      (N,)   int64   index of the frame in the user's input
    /frames/photons       (N,)   int64   total photons per frame (for quick summaries)
    /frames/layout        attr   "dense" or "sparse"
    dense:  /frames/counts  (N, P) int32
    sparse: /frames/indptr  (N+1,) int64  CSR row pointers
            /frames/indices (nnz,) int32  pixel index of each non-zero
            /frames/counts  (nnz,) int32  photon count of each non-zero
    /detector/q             (P, 3) float64 rad/nm (attr units)
    /detector/mask          (P,)   uint8   1 = good pixel
    /detector/solid_angle   (P,)   float64 sr
    /detector/polarization  (P,)   float64
    /detector attrs: wavelength_nm, distance_mm, pixel_size_mm,
                     shape (rows, cols) [regular detectors], center (row, col)

plus provenance attributes on the root (see :mod:`spicompute.io.provenance`).
Simulation truth is *never* in this file (it goes to a separate truth file).

In memory a frame set is a :class:`FrameSet` whose counts are always a
``scipy.sparse.csr_matrix`` of shape (N, P), int32 — photon-sparse data is the
norm in SPI, and the CSR layout is what the EMC E-step consumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from spicompute.errors import InputError
from spicompute.geometry import Detector
from spicompute.io.provenance import atomic_path, stamp

DENSE_MAX_ELEMENTS = 50_000_000  # above N*P of this, "auto" writes sparse


@dataclass
class FrameSet:
    """Photon-count frames on a detector.

    counts : csr_matrix (N, P) int32, photons per pixel per frame.
    frame_id : (N,) int64, index of each frame in the original input file.
    detector : :class:`~spicompute.geometry.Detector` with P pixels.
    """

    counts: sp.csr_matrix
    frame_id: np.ndarray
    detector: Detector

    def __post_init__(self):
        self.counts = sp.csr_matrix(self.counts, dtype=np.int32)
        self.frame_id = np.asarray(self.frame_id, dtype=np.int64)
        if self.counts.shape[0] != self.frame_id.shape[0]:
            raise ValueError("counts and frame_id disagree on the number of frames")
        if self.counts.shape[1] != self.detector.n_pixels:
            raise ValueError("counts and detector disagree on the number of pixels")

    @property
    def n_frames(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_pixels(self) -> int:
        return int(self.counts.shape[1])

    def photons_per_frame(self) -> np.ndarray:
        """Total photons per frame, (N,) int64."""
        return np.asarray(self.counts.sum(axis=1)).ravel().astype(np.int64)

    def dense(self, index=None) -> np.ndarray:
        """Dense counts (n, P) int32 for the selected frames (all by default)."""
        sub = self.counts if index is None else self.counts[index]
        return sub.toarray()

    def images(self, index) -> np.ndarray:
        """Frames as images (n, rows, cols); needs a regular detector."""
        if self.detector.shape is None:
            raise ValueError("detector is not a regular image; no image view")
        return self.dense(index).reshape(-1, *self.detector.shape)

    def subset(self, index) -> "FrameSet":
        """Frames ``index`` (array of row positions) as a new FrameSet."""
        index = np.asarray(index)
        return FrameSet(self.counts[index], self.frame_id[index], self.detector)


def _write_detector(group: h5py.Group, det: Detector) -> None:
    group.create_dataset("q", data=det.q, compression="gzip", shuffle=True)
    group["q"].attrs["units"] = "rad/nm (|q| = 4 pi sin(theta)/lambda)"
    group.create_dataset("mask", data=det.mask.astype(np.uint8), compression="gzip")
    group["mask"].attrs["meaning"] = "1 = good pixel, 0 = masked"
    group.create_dataset("solid_angle", data=det.solid_angle, compression="gzip")
    group["solid_angle"].attrs["units"] = "sr"
    group.create_dataset("polarization", data=det.polarization, compression="gzip")
    group.attrs["wavelength_nm"] = det.wavelength_nm
    group.attrs["distance_mm"] = det.distance_mm
    group.attrs["pixel_size_mm"] = det.pixel_size_mm
    if det.shape is not None:
        group.attrs["shape"] = np.asarray(det.shape, dtype=np.int64)
    if det.center is not None:
        group.attrs["center"] = np.asarray(det.center, dtype=np.float64)
    if det.merge_only is not None:
        group.create_dataset("merge_only", data=det.merge_only.astype(np.uint8), compression="gzip")
        group["merge_only"].attrs["meaning"] = ("1 = not fitted, merged into the 2D models "
                                                "(Dragonfly mask 1)")


def write_frames(path: str | Path, frames: FrameSet, *, layout: str = "auto",
                 stage: str = "frames", params: dict | None = None) -> None:
    """Write a :class:`FrameSet` atomically (temp file, then rename)."""
    if layout == "auto":
        layout = "dense" if frames.n_frames * frames.n_pixels <= DENSE_MAX_ELEMENTS and \
            frames.counts.nnz > 0.05 * frames.n_frames * frames.n_pixels else "sparse"
    if layout not in ("dense", "sparse"):
        raise ValueError(f"layout must be 'dense', 'sparse' or 'auto', got {layout!r}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, stage, params)
        g = h5.create_group("frames")
        g.attrs["layout"] = layout
        g.attrs["n_frames"] = frames.n_frames
        g.attrs["n_pixels"] = frames.n_pixels
        g.create_dataset("frame_id", data=frames.frame_id)
        g.create_dataset("photons", data=frames.photons_per_frame())
        g["photons"].attrs["meaning"] = "total photons per frame (all pixels)"
        chunk_rows = max(1, min(frames.n_frames, 1_000_000 // max(frames.n_pixels, 1)))
        if layout == "dense":
            g.create_dataset("counts", data=frames.counts.toarray(), compression="gzip",
                             shuffle=True, chunks=(chunk_rows, frames.n_pixels))
        else:
            csr = frames.counts
            csr.sort_indices()
            g.create_dataset("indptr", data=csr.indptr.astype(np.int64))
            g.create_dataset("indices", data=csr.indices.astype(np.int32), compression="gzip",
                             shuffle=True)
            g.create_dataset("counts", data=csr.data.astype(np.int32), compression="gzip",
                             shuffle=True)
        g["counts"].attrs["units"] = "photons"
        _write_detector(h5.create_group("detector"), frames.detector)


def _need(h5: h5py.File, key: str, path) -> h5py.Dataset:
    if key not in h5:
        raise InputError(path, key, "dataset missing")
    return h5[key]


def read_detector_group(group: h5py.Group, path) -> Detector:
    """Read ``/detector`` written by :func:`write_frames`."""
    prefix = group.name.strip("/")
    q = _need(group, "q", path)[()]
    if q.ndim != 2 or q.shape[1] != 3:
        raise InputError(path, f"{prefix}/q", f"must have shape (P, 3), got {q.shape}")
    if q.dtype.kind not in "fiu" or not np.all(np.isfinite(q)):
        raise InputError(path, f"{prefix}/q", "must be finite numbers (NaN, Inf or non-numeric found)")
    n = q.shape[0]
    out = {}
    for key in ("mask", "solid_angle", "polarization"):
        arr = _need(group, key, path)[()]
        if arr.shape != (n,):
            raise InputError(path, f"{prefix}/{key}", f"must have shape ({n},), got {arr.shape}")
        out[key] = arr
    attrs = group.attrs
    if "wavelength_nm" not in attrs:
        raise InputError(path, f"{prefix}@wavelength_nm", "attribute missing")
    shape = tuple(int(v) for v in attrs["shape"]) if "shape" in attrs else None
    center = tuple(float(v) for v in attrs["center"]) if "center" in attrs else None
    merge_only = None
    if "merge_only" in group:
        merge_only = group["merge_only"][()]
        if merge_only.shape != (n,):
            raise InputError(path, f"{prefix}/merge_only",
                             f"must have shape ({n},), got {merge_only.shape}")
    return Detector(q=q, mask=out["mask"].astype(bool), solid_angle=out["solid_angle"],
                    polarization=out["polarization"],
                    wavelength_nm=float(attrs["wavelength_nm"]),
                    distance_mm=float(attrs.get("distance_mm", np.nan)),
                    pixel_size_mm=float(attrs.get("pixel_size_mm", np.nan)),
                    shape=shape, center=center, merge_only=merge_only)


def open_h5(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading, turning every failure into InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.is_dir():
        raise InputError(path, None, "is a directory, not an HDF5 file")
    if path.stat().st_size == 0:
        raise InputError(path, None, "file is empty")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = " ".join(str(exc).split("(")[0].split()) or exc.__class__.__name__
        raise InputError(path, None, f"not a readable HDF5 file, truncated or of another "
                                     f"format ({reason})") from exc


def read_frames(path: str | Path) -> FrameSet:
    """Read a frames file written by :func:`write_frames`."""
    with open_h5(path) as h5:
        fid = _need(h5, "frames/frame_id", path)[()]
        layout = h5["frames"].attrs.get("layout", "dense")
        det = read_detector_group(_need(h5, "detector", path), path)
        try:
            if layout == "dense":
                dense = _need(h5, "frames/counts", path)[()]
                if dense.ndim != 2 or dense.shape[1] != det.n_pixels:
                    raise InputError(path, "frames/counts",
                                     f"shape {dense.shape} does not match {det.n_pixels} pixels")
                counts = sp.csr_matrix(dense)
            else:
                indptr = _need(h5, "frames/indptr", path)[()]
                indices = _need(h5, "frames/indices", path)[()]
                data = _need(h5, "frames/counts", path)[()]
                counts = sp.csr_matrix((data, indices, indptr), shape=(len(fid), det.n_pixels))
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(path, "frames", f"corrupt frame data ({exc})") from exc
    if counts.shape[0] != len(fid):
        raise InputError(path, "frames/frame_id",
                         f"{len(fid)} ids for {counts.shape[0]} frames")
    if counts.shape[0] == 0:
        raise InputError(path, "frames/counts", "holds no frames")
    if counts.dtype.kind not in "iu":
        raise InputError(path, "frames/counts", f"must be integer photon counts, got {counts.dtype}")
    if counts.nnz and counts.data.min() < 0:
        raise InputError(path, "frames/counts", "negative counts")
    return FrameSet(counts=counts, frame_id=fid, detector=det)


def read_frame_subset(path: str | Path, index) -> tuple[np.ndarray, np.ndarray, Detector]:
    """Dense counts (n, P) of the frames at row positions ``index``, their ids, the detector.

    Reads only those rows (either layout), so it is cheap on large files.
    """
    index = np.sort(np.asarray(index, dtype=np.int64))
    with open_h5(path) as h5:
        det = read_detector_group(_need(h5, "detector", path), path)
        fid = _need(h5, "frames/frame_id", path)[index]
        if h5["frames"].attrs.get("layout", "dense") == "dense":
            return _need(h5, "frames/counts", path)[index], fid, det
        indptr = _need(h5, "frames/indptr", path)
        out = np.zeros((len(index), det.n_pixels), dtype=np.int32)
        for row, i in enumerate(index):  # a handful of frames for display
            start, stop = indptr[i], indptr[i + 1]
            out[row, h5["frames/indices"][start:stop]] = h5["frames/counts"][start:stop]
        return out, fid, det
