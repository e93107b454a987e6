"""Cheap up-front checks that an HDF5 dataset really stores the data it claims.

A dataset's shape is metadata: a 186 KB file can declare 10^8 frames whose
chunks were never written (HDF5 then returns the fill value, zeros, for every
one of them) or a contiguous block that lies past the end of a truncated
file.  Reading such a dataset takes hours before any per-frame check fires;
:func:`check_stored` finds out from the storage layout in milliseconds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py

from spicompute.errors import InputError


def check_stored(ds: h5py.Dataset, path: str | Path, field: str) -> None:
    """Raise :class:`InputError` unless ``ds`` has storage for all its elements.

    Chunked datasets: every chunk must have been written (an unwritten chunk
    holds only fill values -- a truncated or pre-allocated file).
    Contiguous datasets: the block must be allocated and end inside the file.
    Compact and empty datasets pass.
    """
    if ds.size == 0 or ds.id.get_create_plist().get_layout() == h5py.h5d.COMPACT:
        return
    n = ds.shape[0] if ds.ndim else 1
    if ds.chunks is not None:
        total = math.prod(math.ceil(s / c) for s, c in zip(ds.shape, ds.chunks))
        written = ds.id.get_num_chunks()
        if written < total:
            per_chunk = ds.chunks[0] if ds.ndim else 1
            raise InputError(path, field, f"claims {n} entries along axis 0, but only {written} of "
                                          f"{total} storage chunks were ever written (at most "
                                          f"{min(n, written * per_chunk)} entries hold data): "
                                          "truncated or pre-allocated file")
        return
    offset = ds.id.get_offset()
    stored = ds.id.get_storage_size()
    needed = ds.size * ds.dtype.itemsize
    if offset is None or stored < needed:
        raise InputError(path, field, f"claims {n} entries along axis 0, but its data were never "
                                      "written (no storage allocated)")
    size = os.path.getsize(path)
    if offset + needed > size:
        raise InputError(path, field, f"claims {n} entries along axis 0, but the file ends at byte "
                                      f"{size}, before its data end ({offset + needed}): truncated file")
