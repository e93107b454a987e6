"""Selections back to the data: the member frames of selected averages, written for other tools.

A selection (``selections/<name>.json``) names averages; their member frames
(``results/frames.parquet``, any bootstrap run) are the frames a scientist
wants to re-classify, re-merge in Dragonfly or look up in the run.  They are
written in frame_id order as

- ``cxi``: a CXI file (``entry_1/data_1/data`` + the detector geometry) that
  ``spicompute frames`` (and other CXI readers) ingest;
- ``dragonfly``: a Dragonfly photon file plus its detector file;
- ``csv``: ``frame_id`` and, when the input was a EuXFEL run, ``run, train_id,
  pulse_id`` (from ``results/hits.parquet``).

Every format writes a ``<out>.frames.csv`` beside it mapping the exported
frame order (``export_index``) to the original ``frame_id`` (and run ids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.errors import InputError

FORMATS = ("cxi", "dragonfly", "csv")
RUN_ID_COLUMNS = ("run", "train_id", "pulse_id", "module")


def selection_frame_ids(selection: dict, averages: pd.DataFrame, frames: pd.DataFrame,
                        source="results/frames.parquet") -> np.ndarray:
    """Sorted unique frame_ids of the member frames of the averages in an averages selection.

    averages : per-average table (rules are evaluated on it); frames : results/frames.parquet.
    """
    from spicompute.landscape.selections import members

    if selection["kind"] != "averages":
        raise InputError(selection.get("name", "selection"), "kind", "frames come from an averages selection")
    if "average_ids" in selection:
        unknown = np.setdiff1d(selection["average_ids"], averages["average_id"].to_numpy())
        if unknown.size:
            raise InputError(selection["name"], "average_ids",
                             f"{unknown.size} averages are not in this run (e.g. {int(unknown[0])})")
    ids = averages["average_id"].to_numpy()[members(averages, selection)]
    for col in ("frame_id", "average_id"):
        if col not in frames.columns:
            raise InputError(source, col, "column missing")
    rows = frames[np.isin(frames["average_id"].to_numpy(), ids)]
    out = np.unique(rows["frame_id"].to_numpy(np.int64))
    if out.size == 0:
        raise InputError(selection["name"], "average_ids", "the selected averages have no member frames")
    return out


def frame_rows(frames_h5, frame_ids: np.ndarray) -> np.ndarray:
    """Row positions in a frames file of the given frame_ids (InputError for ids it lacks)."""
    from spicompute.io.frames import open_h5

    with open_h5(frames_h5) as h5:
        if "frames/frame_id" not in h5:
            raise InputError(frames_h5, "frames/frame_id", "dataset missing")
        all_ids = h5["frames/frame_id"][()]
    order = np.argsort(all_ids, kind="stable")
    pos = np.searchsorted(all_ids[order], frame_ids)
    pos = np.clip(pos, 0, len(all_ids) - 1)
    found = all_ids[order][pos] == frame_ids
    if not found.all():
        missing = frame_ids[~found]
        raise InputError(frames_h5, "frames/frame_id",
                         f"{missing.size} selected frames are not in this run (e.g. frame_id {int(missing[0])})")
    return order[pos]


def _blocks(frames_h5, rows: np.ndarray, block: int):
    from spicompute.io.frames import read_frame_subset

    for start in range(0, len(rows), block):
        counts, _, _ = read_frame_subset(frames_h5, rows[start:start + block])
        yield counts


def run_ids(frame_ids: np.ndarray, hits: pd.DataFrame | None) -> pd.DataFrame:
    """``export_index, frame_id`` (+ run, train_id, pulse_id[, module] where the input had them)."""
    table = pd.DataFrame({"export_index": np.arange(len(frame_ids), dtype=np.int64), "frame_id": frame_ids})
    if hits is not None and "frame_id" in hits.columns:
        cols = [c for c in RUN_ID_COLUMNS if c in hits.columns]
        known = hits.drop_duplicates("frame_id").set_index("frame_id")[cols]
        extra = known.reindex(frame_ids)
        if cols and (extra.fillna(-1) >= 0).to_numpy().any():  # simulated data carry -1 placeholders
            for c in cols:
                table[c] = extra[c].to_numpy()
    return table


def export_frames(frames_h5, frame_ids: np.ndarray, out, fmt: str, hits: pd.DataFrame | None = None,
                  block: int = 2048) -> list[Path]:
    """Write the frames ``frame_ids`` (sorted) of ``frames_h5`` as ``fmt``; returns the files written."""
    import scipy.sparse as sp

    from spicompute.io.cxi import write_cxi_blocks
    from spicompute.io.dragonfly import write_dragonfly_detector, write_dragonfly_photons
    from spicompute.io.frames import FrameSet, open_h5, read_detector_group
    from spicompute.io.provenance import atomic_path

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    frame_ids = np.asarray(frame_ids, np.int64)
    rows = frame_rows(frames_h5, frame_ids)
    with open_h5(frames_h5) as h5:
        detector = read_detector_group(h5["detector"], frames_h5)
    written = []
    if fmt == "cxi":
        if detector.shape is None or detector.center is None:
            raise InputError(frames_h5, "detector", "CXI export needs a regular detector (shape and centre)")
        write_cxi_blocks(out, _blocks(frames_h5, rows, block), len(rows), detector)
        written.append(out)
    elif fmt == "dragonfly":
        csr = sp.vstack([sp.csr_matrix(c) for c in _blocks(frames_h5, rows, block)]).tocsr()
        write_dragonfly_photons(out, FrameSet(counts=csr, frame_id=np.arange(len(rows)), detector=detector))
        det_path = out.with_name(out.stem + "_detector.h5")
        write_dragonfly_detector(det_path, detector)
        written += [out, det_path]
    table = run_ids(frame_ids, hits)
    mapping = out if fmt == "csv" else out.with_name(out.name + ".frames.csv")
    with atomic_path(mapping) as tmp:
        table.to_csv(tmp, index=False)
    written.append(mapping)
    return written
