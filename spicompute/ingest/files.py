"""Ingest of users' frame files into our frames layout.

Formats (detected from content, or forced with ``data.format``):

* **CXI** — ``entry_1/data_1/data`` plus detector geometry (see :mod:`spicompute.io.cxi`).
* **Dragonfly** photon HDF5 (``num_pix, place_ones, place_multi, count_multi``)
  plus a detector file (``data.detector``) and ``data.wavelength_nm``.
* **Plain HDF5** — frames at ``data.dataset`` (N, rows, cols) or (N, P); geometry from
  ``data.geometry`` (a CXI or frames file) or from ``data.wavelength_nm``,
  ``data.distance_mm``, ``data.pixel_size_mm`` (beam at the image centre).

Frame ``i`` of the input keeps ``frame_id = i``.  Counts must be finite and
non-negative; non-integer values (photon-converted detector data) are
rounded.  Frames without photons or without any good pixel are an error by
default (``data.empty_frames: error``), or dropped with a warning
(``drop``) — their ids are logged and kept out of every later stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from spicompute.errors import InputError, ParameterError
from spicompute.geometry import Detector, regular_detector
from spicompute.ingest.formats import detect_format
from spicompute.io.cxi import DATA as CXI_DATA, is_cxi, read_cxi_geometry
from spicompute.io.dragonfly import read_dragonfly_photons
from spicompute.io.frames import FrameSet, open_h5, read_detector_group
from spicompute.io.h5check import check_stored

log = logging.getLogger("spicompute.ingest")

FORMATS = ("auto", "cxi", "dragonfly", "hdf5")
CHUNK_ELEMENTS = 20_000_000  # frames are read in blocks of about this many pixels


def counts_to_csr(dataset, path, field: str) -> sp.csr_matrix:
    """Validate and convert a dense (N, rows, cols) or (N, P) dataset to CSR, blockwise."""
    if dataset.ndim not in (2, 3):
        raise InputError(path, field, f"must be (N, rows, cols) or (N, pixels), got {dataset.shape}")
    if dataset.dtype.kind not in "fiub":
        raise InputError(path, field, f"must be numeric counts, got dtype {dataset.dtype}")
    n = dataset.shape[0]
    if n == 0:
        raise InputError(path, field, "holds no frames")
    n_pix = int(np.prod(dataset.shape[1:]))
    step = max(1, CHUNK_ELEMENTS // max(n_pix, 1))
    blocks, rounded = [], False
    for start in range(0, n, step):
        try:
            block = np.asarray(dataset[start:start + step]).reshape(-1, n_pix)
        except OSError as exc:
            raise InputError(path, field, f"cannot be read, file truncated or corrupt ({exc})") \
                from exc
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                frame = start + int(np.nonzero(bad.any(axis=1))[0][0])
                raise InputError(path, field, f"NaN or Inf in frame {frame}")
            nearest = np.round(block)
            if not rounded and np.any(block != nearest):
                rounded = True
                off = np.abs(block - nearest)[block != 0]
                if np.mean(off > 0.2) > 0.4:  # uniform fractions: 60 % lie > 0.2 from an integer
                    raise InputError(path, field, "values are not photon counts (most lie far from "
                                                  "an integer: detector units?); convert to photons first")
            block = nearest
        elif block.dtype.kind not in "iu":
            raise InputError(path, field, f"must be numeric counts, got dtype {block.dtype}")
        if block.min(initial=0) < 0:
            frame = start + int(np.nonzero((block < 0).any(axis=1))[0][0])
            raise InputError(path, field, f"negative counts in frame {frame}")
        blocks.append(sp.csr_matrix(block.astype(np.int32)))
    if rounded:
        log.warning("%s: %s holds non-integer values; rounded to photon counts", path, field)
    return sp.vstack(blocks, format="csr")


def _check_frames(frames: FrameSet, path, field: str, empty_frames: str) -> FrameSet:
    """Reject (or drop) frames with no photons on good pixels or no good pixel."""
    if not frames.detector.mask.any():
        raise InputError(path, "mask", "every pixel is masked")
    good_photons = np.asarray(frames.counts[:, frames.detector.mask].sum(axis=1)).ravel()
    empty = np.nonzero(good_photons == 0)[0]
    if len(empty) == 0:
        return frames
    if len(empty) == frames.n_frames:
        raise InputError(path, field, "no frame has a photon on an unmasked pixel")
    if empty_frames == "error":
        raise InputError(path, field,
                         f"{len(empty)} frame(s) have no photons on unmasked pixels (first: "
                         f"frame {int(frames.frame_id[empty[0]])}); set data.empty_frames: drop "
                         "to skip them")
    log.warning("%s: dropping %d frame(s) with no photons on unmasked pixels (frame_id %s%s)",
                path, len(empty), frames.frame_id[empty[:10]].tolist(),
                " ..." if len(empty) > 10 else "")
    keep = np.setdiff1d(np.arange(frames.n_frames), empty)
    if len(keep) == 0:
        raise InputError(path, field, "no frame has a photon on an unmasked pixel")
    return frames.subset(keep)


def _geometry_for_plain(data: dict, frame_shape, path) -> Detector:
    geometry = data.get("geometry") or ""
    if geometry:
        with open_h5(geometry) as h5:
            if is_cxi(h5):
                det, _ = read_cxi_geometry(h5, geometry, frame_shape, data.get("wavelength_nm"))
                return det
            if "detector" in h5:
                det = read_detector_group(h5["detector"], geometry)
                if det.n_pixels != int(np.prod(frame_shape)):
                    raise InputError(geometry, "detector/q",
                                     f"{det.n_pixels} pixels, frames in {path} have "
                                     f"{int(np.prod(frame_shape))}")
                return det
        raise InputError(geometry, None, "holds no CXI or spicompute detector geometry")
    missing = [k for k in ("wavelength_nm", "distance_mm", "pixel_size_mm") if not data.get(k)]
    if missing:
        raise ParameterError(f"data.{missing[0]}",
                             "plain HDF5 input needs data.geometry or wavelength_nm, distance_mm "
                             "and pixel_size_mm")
    if len(frame_shape) != 2:
        raise InputError(path, data.get("dataset"),
                         "flat (N, pixels) frames need data.geometry for pixel positions")
    return regular_detector(frame_shape, float(data["wavelength_nm"]), float(data["distance_mm"]),
                            float(data["pixel_size_mm"]))


def ingest(data: dict) -> FrameSet:
    """Read the user's file named in the ``data`` params section."""
    path = Path(data["input"])
    fmt = data.get("format", "auto") or "auto"
    if fmt not in FORMATS:
        raise ParameterError("data.format", f"must be one of {FORMATS}, got {fmt!r}")
    empty_frames = data.get("empty_frames", "error") or "error"
    if empty_frames not in ("error", "drop"):
        raise ParameterError("data.empty_frames", f"must be 'error' or 'drop', got {empty_frames!r}")
    dataset = data.get("dataset") or ""
    if fmt == "auto":
        fmt = detect_format(path, dataset)
    log.info("ingesting %s as %s", path, fmt)
    if fmt == "dragonfly":
        det_path = data.get("detector") or ""
        if not det_path:
            raise ParameterError("data.detector", "a Dragonfly photon file needs its detector file")
        frames = read_dragonfly_photons(path, det_path, data.get("wavelength_nm"))
        return _check_frames(frames, path, "place_ones", empty_frames)
    if fmt == "frames":
        from spicompute.io.frames import read_frames

        return _check_frames(read_frames(path), path, "frames/counts", empty_frames)
    with open_h5(path) as h5:
        field = CXI_DATA if fmt == "cxi" else dataset
        if not field:
            raise ParameterError("data.dataset", "plain HDF5 input needs the frames dataset path")
        if field not in h5:
            raise InputError(path, field, "dataset missing")
        ds = h5[field]
        if not isinstance(ds, h5py.Dataset):
            raise InputError(path, field, "is a group, not a dataset")
        check_stored(ds, path, field)  # a shape claiming 10^8 frames that are not there: fail now
        frame_shape = tuple(ds.shape[1:])
        counts = counts_to_csr(ds, path, field)
        if fmt == "cxi":
            if len(frame_shape) != 2:
                raise InputError(path, field, f"CXI frames must be (N, rows, cols), got {ds.shape}")
            det, _ = read_cxi_geometry(h5, path, frame_shape, data.get("wavelength_nm"))
        else:
            det = _geometry_for_plain(data, frame_shape, path)
    if det.n_pixels != counts.shape[1]:
        raise InputError(path, field, f"frames have {counts.shape[1]} pixels, detector "
                                      f"{det.n_pixels}")
    frames = FrameSet(counts=counts, frame_id=np.arange(counts.shape[0]), detector=det)
    return _check_frames(frames, path, field, empty_frames)
