"""2D EMC on frames streamed from the file: photon data never all in memory.

With ``classify2d.stream`` on, a run's frames are a :class:`StreamCounts`
(a :class:`~spicompute.io.stream.FrameFile`, the sorted file rows of the run,
the grid's pixels and the per-frame photon totals) instead of an in-memory
CSR matrix, and its shards are :class:`StreamShard` s that re-read their
frames block by block (``block_frames``) in every E/M step.  Memory then
holds the per-frame quantities (row numbers, photons, scales, β, best class,
posterior maximum: tens of bytes a frame) plus one block of photons, instead
of every photon three times (CSR + the two gather layouts of a shard).
A shard pickles to (file path, rows): Dask workers read their frames from a
shared file system themselves.

The numbers are the in-memory path's: the same rows, pixels, blocks and
float32 counts go through the same kernels (tests/emc2d/test_emc2d_stream.py
checks bitwise equality), at the cost of reading and re-indexing the photons
once per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from spicompute.emc2d.steps import _bag
from spicompute.io.stream import FrameFile

READ_FRAMES = 16384  # frames read from the file at once in whole-file passes (a fixed transient)


def crop(block: sp.csr_matrix, pixels: np.ndarray) -> sp.csr_matrix:
    """Counts of ``block`` on the grid's ``pixels`` as float32 CSR with sorted indices
    (exactly what the in-memory path builds: ``csr_matrix(counts[:, pixels], dtype=float32)``)."""
    out = sp.csr_matrix(block[:, pixels], dtype=np.float32)
    out.sort_indices()
    return out


def fit_only(block: sp.csr_matrix, fit: np.ndarray) -> sp.csr_matrix:
    """``block`` with the columns outside ``fit`` emptied (the likelihood's counts)."""
    out = sp.csr_matrix(block @ sp.diags(np.asarray(fit, np.float32)))
    out.eliminate_zeros()
    out.sort_indices()
    return out


def used_photons(source: FrameFile, pixels: np.ndarray, block_frames: int = READ_FRAMES) -> np.ndarray:
    """Photons of every frame on the used pixels, (N,) float64 -- one pass over the file."""
    out = np.empty(source.n_frames)
    for start, stop, block in source.iter_blocks(block_frames):
        out[start:stop] = np.asarray(crop(block, pixels).sum(axis=1), dtype=np.float64).reshape(-1)
    return out


def stream_digest(source: FrameFile, pixels: np.ndarray, block_frames: int = READ_FRAMES) -> str:
    """Short hash of the used-pixel counts of the whole file (the checkpoint key's data part)."""
    import hashlib

    h = hashlib.sha1(b"stream")
    for start, _, block in source.iter_blocks(block_frames):
        c = crop(block, pixels)
        for arr in (np.asarray([start]), c.indptr, c.indices, c.data):
            h.update(np.ascontiguousarray(arr).tobytes())
    h.update(str((source.n_frames, len(pixels))).encode())
    return h.hexdigest()[:16]


@dataclass
class StreamCounts:
    """The frames of one run, on the file: ``rows`` (n,) sorted positions, ``photons`` (n,) on ``pixels``."""

    source: FrameFile
    rows: np.ndarray
    pixels: np.ndarray
    photons: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.rows.shape[0]), int(self.pixels.shape[0]))

    def column_sums(self, block_frames: int = READ_FRAMES) -> np.ndarray:
        """Sum of all frames (P,) float64 -- exact (integer counts), so any block order gives the same."""
        total = np.zeros(self.shape[1])
        for a in range(0, self.shape[0], block_frames):
            blk = crop(self.source.take(self.rows[a:a + block_frames]), self.pixels)
            total += np.asarray(blk.sum(axis=0, dtype=np.float64)).reshape(-1)
        return total

    def project(self, matrix, block_frames: int = READ_FRAMES) -> np.ndarray:
        """Every frame times ``matrix`` (P, B): (n, B) float64, read block by block."""
        out = np.zeros((self.shape[0], matrix.shape[1]))
        for a in range(0, self.shape[0], block_frames):
            blk = crop(self.source.take(self.rows[a:a + block_frames]), self.pixels)
            out[a:a + blk.shape[0]] = sp.csr_matrix(blk @ matrix).toarray()
        return out

    def dense_rows(self, positions: np.ndarray) -> np.ndarray:
        """Frames at ``positions`` (sorted, into ``rows``) as a dense (k, P) float64 array."""
        return crop(self.source.take(self.rows[positions]), self.pixels).toarray().astype(np.float64)

    def shards(self, bounds: np.ndarray, block_frames: int,
               fit: np.ndarray | None = None) -> list["StreamShard"]:
        """``fit`` (P,) bool: pixels in the likelihood (None: all; see :class:`emc2d.Shard`)."""
        return [StreamShard(self.source, self.rows[a:b], self.pixels, self.photons[a:b],
                            int(block_frames), fit)
                for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass
class StreamShard:
    """A shard whose blocks are read from the file when iterated (see :class:`spicompute.emc2d.Shard`).

    Iterating ``blocks`` yields ``(start, stop, bag, transposed bag)`` like an
    in-memory shard's list; :meth:`fit_block` and :meth:`count_block` return the CSRs of the
    block last yielded (the likelihood and the sparse M-step read them).
    """

    source: FrameFile
    rows: np.ndarray
    pixels: np.ndarray
    photons: np.ndarray            # on the fitted pixels
    block_frames: int
    fit: np.ndarray | None = None  # (P,) bool: pixels in the likelihood; the rest are merged only
    _current: tuple = field(default=(), repr=False)

    @property
    def n_frames(self) -> int:
        return int(self.rows.shape[0])

    @property
    def blocks(self):
        for start in range(0, self.n_frames, self.block_frames):
            stop = min(self.n_frames, start + self.block_frames)
            blk = crop(self.source.take(self.rows[start:stop]), self.pixels)
            fitted = blk if self.fit is None else fit_only(blk, self.fit)
            self._current = (start, stop, fitted, blk)
            yield start, stop, _bag(fitted), _bag(blk.T.tocsr())
        self._current = ()

    def _block(self, start: int, stop: int) -> tuple:
        if not self._current or self._current[:2] != (start, stop):
            raise RuntimeError("StreamShard.fit_block: only the block being iterated is available")
        return self._current

    def fit_block(self, start: int, stop: int) -> sp.csr_matrix:
        return self._block(start, stop)[2]

    def count_block(self, start: int, stop: int) -> sp.csr_matrix:
        return self._block(start, stop)[3]

    def fit_rows(self, start: int, stop: int, counts: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
        """Rows ``rows`` of a block's fitted counts, made from its counts (``count_block``) at any time,
        not only while the block is being read: what ``fit_block`` gives, row by row the same."""
        part = counts[rows]
        return part if self.fit is None else fit_only(part, self.fit)
