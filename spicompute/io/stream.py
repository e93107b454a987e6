"""Frames files too large for memory: lazy reading by row blocks, streamed validation, chunked writing.

:class:`FrameFile` opens a frames file (layout in :mod:`spicompute.io.frames`, either
``dense`` or photon-``sparse``) and keeps only the per-frame metadata in memory
(``frame_id``, 8 bytes a frame) and the detector; photon counts are read on demand as
CSR row blocks.  It is what ``classify2d`` streams from when a file holds many
frames (``classify2d.stream``), and it pickles to its path, so Dask workers
read their own shards from a shared file system instead of receiving them.

:func:`write_sparse_frames_stream` writes a photon-sparse frames file from an
iterator of CSR blocks (bounded memory: one block at a time), e.g. the
million-frame benchmark file (benchmarks/bench_stream.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np
import scipy.sparse as sp

from spicompute.errors import InputError
from spicompute.geometry import Detector
from spicompute.io.frames import FrameSet, _write_detector, open_h5, read_detector_group
from spicompute.io.provenance import atomic_path, stamp


class FrameFile:
    """Read-only, lazily read frames file.

    Attributes: ``path``, ``layout`` ("dense" | "sparse"), ``n_frames`` N,
    ``n_pixels`` P, ``frame_id`` (N,) int64, ``detector``, ``nnz`` (stored
    non-zeros; N * P for dense).  Opening checks the sizes the file claims
    against what it holds (an ``indptr`` promising more photons than stored
    is an :class:`InputError` at once, not after hours of reading);
    :meth:`validate` reads everything once, in blocks.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._h5 = None
        h5 = self._file()
        if "frames" not in h5 or not isinstance(h5["frames"], h5py.Group):
            raise InputError(self.path, "frames", "group missing")
        if "frame_id" not in h5["frames"]:
            raise InputError(self.path, "frames/frame_id", "dataset missing")
        fid = h5["frames/frame_id"]
        if fid.ndim != 1:
            raise InputError(self.path, "frames/frame_id", f"must be (N,), got {fid.shape}")
        self.frame_id = np.asarray(fid[()], dtype=np.int64)
        self.n_frames = int(self.frame_id.shape[0])
        if self.n_frames == 0:
            raise InputError(self.path, "frames/frame_id", "holds no frames")
        if "detector" not in h5:
            raise InputError(self.path, "detector", "group missing")
        self.detector: Detector = read_detector_group(h5["detector"], self.path)
        self.n_pixels = self.detector.n_pixels
        self.layout = str(h5["frames"].attrs.get("layout", "dense"))
        if self.layout not in ("dense", "sparse"):
            raise InputError(self.path, "frames@layout", f"must be dense or sparse, got {self.layout!r}")
        for key in (("counts",) if self.layout == "dense" else ("indptr", "indices", "counts")):
            if f"frames/{key}" not in h5:
                raise InputError(self.path, f"frames/{key}", "dataset missing")
        if self.layout == "dense":
            shape = h5["frames/counts"].shape
            if shape != (self.n_frames, self.n_pixels):
                raise InputError(self.path, "frames/counts",
                                 f"shape {shape} does not match {self.n_frames} frames x {self.n_pixels} pixels")
            self.nnz = self.n_frames * self.n_pixels
        else:
            ip, ix, ct = (h5[f"frames/{k}"] for k in ("indptr", "indices", "counts"))
            if ip.shape != (self.n_frames + 1,):
                raise InputError(self.path, "frames/indptr",
                                 f"must be ({self.n_frames + 1},) for {self.n_frames} frames, got {ip.shape}")
            if ix.shape != ct.shape or ix.ndim != 1:
                raise InputError(self.path, "frames/indices", f"shape {ix.shape} != counts {ct.shape}")
            first, last = (int(v) for v in ip[[0, -1]])
            if first != 0 or last != ix.shape[0]:
                raise InputError(self.path, "frames/indptr",
                                 f"runs {first}..{last} but {ix.shape[0]} non-zeros are stored")
            self.nnz = int(last)
        for key in ("counts",) + (("indices",) if self.layout == "sparse" else ()):
            kind = h5[f"frames/{key}"].dtype.kind
            if kind not in "iu":
                raise InputError(self.path, f"frames/{key}", f"must hold integers, got dtype {h5[f'frames/{key}'].dtype}")

    # -------------------------------------------------------------- file handle (not pickled)
    def _file(self) -> h5py.File:
        if self._h5 is None:
            self._h5 = open_h5(self.path)
        return self._h5

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __getstate__(self):
        """Pickled (to a Dask worker) without the file handle and the frame ids (a worker reads counts)."""
        state = dict(self.__dict__)
        state["_h5"] = None
        state["frame_id"] = None
        return state

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -------------------------------------------------------------- reading
    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Frames ``start .. stop`` as CSR (n, P) int32 with sorted indices."""
        h5 = self._file()
        try:
            if self.layout == "dense":
                block = sp.csr_matrix(np.asarray(h5["frames/counts"][start:stop], dtype=np.int32))
            else:
                ptr = np.asarray(h5["frames/indptr"][start:stop + 1], dtype=np.int64)
                lo, hi = int(ptr[0]), int(ptr[-1])
                idx = np.asarray(h5["frames/indices"][lo:hi], dtype=np.int32)
                val = np.asarray(h5["frames/counts"][lo:hi], dtype=np.int32)
                block = sp.csr_matrix((val, idx, ptr - lo), shape=(stop - start, self.n_pixels))
        except (OSError, ValueError) as exc:
            raise InputError(self.path, "frames", f"corrupt frame data in frames {start}..{stop} ({exc})") from exc
        block.sort_indices()
        return block

    def iter_blocks(self, block_frames: int = 65536) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """(start, stop, CSR block) over the whole file."""
        for start in range(0, self.n_frames, int(block_frames)):
            stop = min(self.n_frames, start + int(block_frames))
            yield start, stop, self.read_rows(start, stop)

    def take(self, rows: np.ndarray) -> sp.csr_matrix:
        """Frames at sorted positions ``rows`` (read as the covering range, then selected)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return sp.csr_matrix((0, self.n_pixels), dtype=np.int32)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if rows.size * 4 < hi - lo:  # scattered: read row by row ranges
            return sp.vstack([self.read_rows(int(r), int(r) + 1) for r in rows], format="csr")
        return self.read_rows(lo, hi)[rows - lo]

    def head(self, n: int) -> FrameSet:
        """The first ``n`` frames as an in-memory FrameSet (e.g. to estimate the particle size)."""

        n = min(int(n), self.n_frames)
        return FrameSet(self.read_rows(0, n), self.frame_id[:n], self.detector)

    def photons_per_frame(self) -> np.ndarray:
        """Total photons per frame (N,) int64 (the stored summary, or summed from the counts)."""
        h5 = self._file()
        if "frames/photons" in h5 and h5["frames/photons"].shape == (self.n_frames,):
            return np.asarray(h5["frames/photons"][()], dtype=np.int64)
        return self.validate()

    def validate(self, block_frames: int = 65536, mask: np.ndarray | None = None) -> np.ndarray:
        """Read every frame once (blocks of ``block_frames``); return photons per frame (N,) int64
        (on the pixels where ``mask`` is True, when given).

        Checks what :func:`spicompute.io.frames.read_frames` would need: row
        pointers non-decreasing, pixel indices in range, counts >= 0.
        """
        photons = np.empty(self.n_frames, np.int64)
        h5 = self._file()
        for start in range(0, self.n_frames, int(block_frames)):
            stop = min(self.n_frames, start + int(block_frames))
            if self.layout == "sparse":
                ptr = np.asarray(h5["frames/indptr"][start:stop + 1], dtype=np.int64)
                if np.any(np.diff(ptr) < 0):
                    bad = start + int(np.flatnonzero(np.diff(ptr) < 0)[0])
                    raise InputError(self.path, "frames/indptr", f"decreases at frame {bad}")
                idx = h5["frames/indices"][int(ptr[0]):int(ptr[-1])]
                if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n_pixels):
                    raise InputError(self.path, "frames/indices",
                                     f"pixel index out of 0..{self.n_pixels - 1} in frames {start}..{stop}")
            block = self.read_rows(start, stop)
            if block.data.size and int(block.data.min()) < 0:
                frame = start + int(np.flatnonzero(np.asarray((block < 0).sum(axis=1)).ravel())[0])
                raise InputError(self.path, "frames/counts", f"negative counts in frame {frame}")
            if mask is not None:
                block = block[:, np.flatnonzero(mask)]
            photons[start:stop] = np.asarray(block.sum(axis=1, dtype=np.int64)).ravel()
        return photons


#: a frames file (our layout) with more frames than this is ingested block by block
STREAM_INGEST_FRAMES = 200_000


def write_sparse_frames_stream(path: str | Path, blocks: Iterable[sp.csr_matrix], detector: Detector, *,
                               n_frames: int, frame_id: np.ndarray | None = None, stage: str = "frames",
                               params: dict | None = None) -> int:
    """Write a photon-sparse frames file from CSR blocks (N_b, P), one block in memory at a time.

    ``n_frames`` is the total (the row-pointer dataset is pre-sized); the
    non-zero datasets grow by appending (chunked, gzip).  Written atomically.
    Returns the number of stored non-zeros.
    """
    n_frames = int(n_frames)
    fid = np.arange(n_frames, dtype=np.int64) if frame_id is None else np.asarray(frame_id, np.int64)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, stage, params)
        g = h5.create_group("frames")
        g.attrs["layout"] = "sparse"
        g.attrs["n_frames"] = n_frames
        g.attrs["n_pixels"] = detector.n_pixels
        g.create_dataset("frame_id", data=fid)
        photons = g.create_dataset("photons", shape=(n_frames,), dtype=np.int64)
        photons.attrs["meaning"] = "total photons per frame (all pixels)"
        indptr = g.create_dataset("indptr", shape=(n_frames + 1,), dtype=np.int64)
        chunk = 1 << 18
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,),
                                   compression="gzip", shuffle=True)
        counts = g.create_dataset("counts", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,),
                                  compression="gzip", shuffle=True)
        counts.attrs["units"] = "photons"
        row, nnz = 0, 0
        indptr[0] = 0
        for block in blocks:
            block = sp.csr_matrix(block, dtype=np.int32)
            block.sort_indices()
            n = block.shape[0]
            if block.shape[1] != detector.n_pixels or row + n > n_frames:
                raise ValueError(f"block of shape {block.shape} does not fit {n_frames} x {detector.n_pixels}")
            indptr[row + 1:row + n + 1] = nnz + block.indptr[1:].astype(np.int64)
            photons[row:row + n] = np.asarray(block.sum(axis=1, dtype=np.int64)).ravel()
            indices.resize((nnz + block.nnz,))
            counts.resize((nnz + block.nnz,))
            indices[nnz:] = block.indices
            counts[nnz:] = block.data
            row += n
            nnz += block.nnz
        if row != n_frames:
            raise ValueError(f"blocks held {row} frames, {n_frames} announced")
        _write_detector(h5.create_group("detector"), detector)
    return nnz
