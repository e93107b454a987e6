"""Block-by-block ingest of frame files too large to hold."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from spicompute.errors import InputError, ParameterError
from spicompute.ingest.formats import detect_format
from spicompute.io.frames import open_h5
from spicompute.io.stream import STREAM_INGEST_FRAMES, FrameFile, write_sparse_frames_stream

log = logging.getLogger("spicompute.ingest")


def streams_on_ingest(data: dict) -> bool:
    """Whether the frames stage should copy ``data.input`` block by block: it is a frames file in our
    layout (format auto or frames) with more than ``STREAM_INGEST_FRAMES`` frames, and the layout
    asked for is auto or sparse."""
    fmt = data.get("format", "auto") or "auto"
    if fmt not in ("auto", "frames") or (data.get("layout", "auto") or "auto") not in ("auto", "sparse"):
        return False
    path = Path(data["input"])
    if fmt == "auto" and detect_format(path, data.get("dataset") or "") != "frames":
        return False
    with open_h5(path) as h5:
        fid = h5.get("frames/frame_id")
        return isinstance(fid, h5py.Dataset) and fid.ndim == 1 and fid.shape[0] > STREAM_INGEST_FRAMES


def copy_frames_stream(src_path: str | Path, out: str | Path, *, empty_frames: str = "error",
                       block_frames: int = 65536, stage: str = "frames", params: dict | None = None) -> FrameFile:
    """The frames stage for a large frames file: validate it in blocks, then write it (photon-sparse)
    block by block; frames without photons on good pixels raise (``empty_frames: error``) or are
    dropped (``drop``), as :func:`spicompute.ingest.files.ingest` does.  Returns the written file, opened."""
    if empty_frames not in ("error", "drop"):
        raise ParameterError("data.empty_frames", f"must be 'error' or 'drop', got {empty_frames!r}")
    src = FrameFile(src_path)
    field = "frames/counts"
    if not src.detector.mask.any():
        raise InputError(src.path, "detector/mask", "every pixel is masked")
    good = src.validate(block_frames, mask=src.detector.mask)
    empty = np.flatnonzero(good == 0)
    if empty.size and empty_frames == "error":
        raise InputError(src.path, field,
                         f"{len(empty)} frame(s) have no photons on unmasked pixels (first: frame "
                         f"{int(src.frame_id[empty[0]])}); set data.empty_frames: drop to skip them")
    keep = np.flatnonzero(good > 0)
    if keep.size == 0:
        raise InputError(src.path, field, "no frame has a photon on an unmasked pixel")
    if empty.size:
        log.warning("%s: dropping %d frame(s) with no photons on unmasked pixels (frame_id %s%s)", src.path,
                    len(empty), src.frame_id[empty[:10]].tolist(), " ..." if len(empty) > 10 else "")

    def blocks():
        for start in range(0, src.n_frames, block_frames):
            stop = min(src.n_frames, start + block_frames)
            rows = keep[(keep >= start) & (keep < stop)]
            if rows.size:
                yield src.read_rows(start, stop)[rows - start]

    write_sparse_frames_stream(out, blocks(), src.detector, n_frames=keep.size, frame_id=src.frame_id[keep],
                               stage=stage, params=params)
    src.close()
    return FrameFile(out)
