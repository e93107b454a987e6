"""The frames stage's report: hits table, metrics and lit-pixel histogram (every input kind).

* ``results/hits.parquet`` — one row per frame read: ``frame_id, run, train_id, pulse_id,
  lit_pixels, photons, is_hit``.  For EuXFEL runs ``run`` is the run number and the ids are
  the facility's; for simulated / CXI / Dragonfly / HDF5 input they are -1 (not applicable)
  and every frame written is a hit (``is_hit`` true).
* ``metrics/frames.json`` — frames read, frames written and photon/lit-pixel statistics for
  every input; hits, hit rate and the lit-pixel threshold for EuXFEL runs.
* ``metrics/frames_lit_histogram.csv`` — columns ``lit_pixels`` (bin centre), ``bin_low``,
  ``bin_high``, ``frames``, ``above_threshold`` (DVC plot; for EuXFEL input the last bin also
  counts all frames above its upper edge).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spicompute.io.provenance import atomic_path


def write_json(path, payload: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_lit_histogram(path, edges, counts, threshold: float | None) -> None:
    """CSV of a lit-pixel histogram (see module docstring)."""
    import pandas as pd

    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    centre = 0.5 * (edges[:-1] + edges[1:])
    # lit counts are integers: a bin is above the threshold when its low edge is >= floor(t) + 0.5
    above = edges[:-1] >= np.floor(threshold) + 0.5 if threshold is not None else np.ones(len(counts), bool)
    df = pd.DataFrame({"lit_pixels": centre, "bin_low": edges[:-1], "bin_high": edges[1:],
                       "frames": counts, "above_threshold": above})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")


def frameset_report(frames, hits_path, source: str) -> tuple[dict, tuple]:
    """hits table for a FrameSet (simulated or file input) or a streamed FrameFile (a large
    frames file, read block by block); returns (metrics, histogram)."""
    import pyarrow.parquet as pq

    from spicompute.ingest.euxfel import hits_batch

    n = frames.n_frames
    if hasattr(frames, "iter_blocks"):   # spicompute.io.stream.FrameFile: never all in memory
        lit, photons = np.empty(n, np.int64), np.empty(n, np.float64)
        for start, stop, block in frames.iter_blocks():
            lit[start:stop] = np.diff((block > 0).tocsr().indptr)
            photons[start:stop] = np.asarray(block.sum(axis=1)).reshape(-1)
    else:
        lit = np.diff((frames.counts > 0).tocsr().indptr).astype(np.int64)
        photons = frames.photons_per_frame()
    batch = hits_batch(frames.frame_id, -1, np.full(n, -1), np.full(n, -1), lit, photons,
                       np.ones(n, bool))
    Path(hits_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(hits_path) as tmp:
        import pyarrow as pa

        pq.write_table(pa.Table.from_batches([batch]), str(tmp))
    top = max(float(lit.max()) if n else 1.0, 1.0)
    hist, edges = np.histogram(lit, bins=64, range=(0.0, top))
    metrics = {"source": source, "frames_read": n, "frames_written": n,
               "photons_per_frame_mean": float(photons.mean()) if n else 0.0,
               "lit_pixels_median": float(np.median(lit)) if n else 0.0,
               "lit_pixels_mean": float(lit.mean()) if n else 0.0}
    return metrics, (edges, hist)
