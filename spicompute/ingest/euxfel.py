"""European XFEL run directory -> hits in our frames file (the frames stage path).

``data.input`` pointing at a run directory (``RAW-*.h5`` / ``CORR-*.h5`` files readable
by ``extra_data.RunDirectory``, e.g. ``/gpfs/exfel/exp/SPB/<cycle>/<proposal>/proc/r<run>``)
is streamed, never loaded whole:

1. **Partitions** are the run's sequence files (``...-S00000.h5``, ``-S00001`` ...) of the
   AGIPD 1M detector, intersected with the ``data.trains`` selection.  Each partition is one
   task: in-process (``data.scheduler: ""``) or on Dask (``local:N`` or a scheduler address,
   the convention of the other stages).  Results are consumed in partition order (a bounded
   window of tasks in flight), so the output is identical for every scheduler.
2. Inside a partition, ``data.trains_per_chunk`` trains at a time and **one module at a time**
   are read (float32 module-frames of 256 KB: memory per task ~ trains_per_chunk x pulses x
   256 KB x a few temporaries, independent of the run length), converted to photons
   (:func:`spicompute.ingest.hitfinding.to_photons`: keV with the photon energy, or ADU with
   ``data.adu_per_photon``), masked (proc ``image.mask`` != 0, module edges and ASIC
   borders, the user's ``data.mask``) and reduced to lit-pixel counts per frame plus a
   photon-sparse CSR of the hits.
3. **Hit threshold.**  ``data.hit_threshold: auto`` applies the documented rule of
   :func:`spicompute.ingest.hitfinding.auto_threshold` (median + ``hit_sigma`` robust sigmas of the
   lit-pixel count) to a first, lit-count-only pass over ``data.threshold_trains`` trains
   spread evenly over the selection (all of them when the selection is that short); a number
   is used as given.  A frame is a hit when ``lit_pixels > threshold``.
4. **Outputs**, written incrementally to temp names and renamed at the end: the normal
   frames file (sparse layout, only hits; ``frame_id`` = position of the frame in the
   selected (train, pulse) stream), ``results/hits.parquet`` (one row per frame read:
   ``frame_id, run, train_id, pulse_id, lit_pixels, photons, is_hit``), a lit-pixel
   histogram (fixed bins; the last bin also counts everything above it) and the metrics dict.

The detector of the frames file is the unassembled AGIPD 1M layout: P = 16 x 512 x 128
pixels in (module, slow scan, fast scan) order with q from the geometry
(:func:`spicompute.io.euxfel.agipd_q`), solid angle and x-polarisation factor per pixel.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from spicompute.errors import InputError, ParameterError
from spicompute.execution import dask_client
from spicompute.ingest.euxfel_convert import _map_partitions, threshold_sample
from spicompute.ingest.euxfel_run import (
    N_PIXELS,
    EuxfelConfig,
    load_user_mask,
    open_run,
    photon_energy,
    run_number,
    sequence_partitions,
)
from spicompute.io.euxfel import AGIPD_SHAPE, HC_KEV_NM, agipd_q, load_agipd_geometry, static_mask

log = logging.getLogger("spicompute.euxfel")

HIST_BINS = 64


def histogram_edges(threshold: float, sample_max: float, bins: int = HIST_BINS) -> np.ndarray:
    """Fixed lit-pixel histogram edges with one edge at floor(threshold) + 0.5, so that bins
    are wholly below or above the hit threshold (lit counts are integers); spans
    0 .. max(2 threshold, 1.5 x the threshold sample's maximum)."""
    cut = np.floor(threshold) + 0.5
    top = max(2.0 * threshold, 1.5 * sample_max, cut + 1.0)
    k = int(np.clip(round(bins * cut / top), 1, bins - 1))
    return np.concatenate([np.linspace(0.0, cut, k + 1), np.linspace(cut, top, bins - k + 1)[1:]])


# ----------------------------------------------------------------------------- writers
class SparseFramesWriter:
    """Append photon-sparse frames to a frames file (layout of :mod:`spicompute.io.frames`)."""

    def __init__(self, h5: h5py.File):
        self.h5 = h5
        g = h5.create_group("frames")
        g.attrs["layout"] = "sparse"
        self.g = g
        opts = dict(maxshape=(None,), chunks=True)
        g.create_dataset("frame_id", shape=(0,), dtype=np.int64, **opts)
        g.create_dataset("photons", shape=(0,), dtype=np.int64, **opts)
        g["photons"].attrs["meaning"] = "total photons per frame (all pixels)"
        g.create_dataset("indptr", shape=(1,), dtype=np.int64, data=np.zeros(1, np.int64), **opts)
        g.create_dataset("indices", shape=(0,), dtype=np.int32, compression="gzip", shuffle=True, **opts)
        g.create_dataset("counts", shape=(0,), dtype=np.int32, compression="gzip", shuffle=True, **opts)
        g["counts"].attrs["units"] = "photons"
        self.n = 0
        self.nnz = 0

    @staticmethod
    def _append(ds, values):
        old = ds.shape[0]
        ds.resize((old + len(values),))
        if len(values):
            ds[old:] = values

    def append(self, frame_id: np.ndarray, counts: sp.csr_matrix) -> None:
        counts = sp.csr_matrix(counts, dtype=np.int32)
        counts.sort_indices()
        self._append(self.g["frame_id"], np.asarray(frame_id, np.int64))
        self._append(self.g["photons"], np.asarray(counts.sum(axis=1)).ravel().astype(np.int64))
        self._append(self.g["indptr"], counts.indptr[1:].astype(np.int64) + self.nnz)
        self._append(self.g["indices"], counts.indices.astype(np.int32))
        self._append(self.g["counts"], counts.data.astype(np.int32))
        self.n += counts.shape[0]
        self.nnz += counts.nnz

    def finish(self, n_pixels: int) -> None:
        self.g.attrs["n_frames"] = self.n
        self.g.attrs["n_pixels"] = n_pixels


def hits_table_schema():
    import pyarrow as pa

    return pa.schema([("frame_id", pa.int64()), ("run", pa.int64()), ("train_id", pa.int64()),
                      ("pulse_id", pa.int64()), ("lit_pixels", pa.int64()), ("photons", pa.int64()),
                      ("is_hit", pa.bool_())])


def hits_batch(frame_id, run, train_id, pulse_id, lit, photons, is_hit):
    """One record batch of the hits table (schema :func:`hits_table_schema`)."""
    import pyarrow as pa

    n = len(frame_id)
    cols = [np.asarray(frame_id, np.int64), np.full(n, run, np.int64), np.asarray(train_id, np.int64),
            np.asarray(pulse_id, np.int64), np.asarray(lit, np.int64), np.asarray(photons, np.int64),
            np.asarray(is_hit, bool)]
    return pa.RecordBatch.from_arrays([pa.array(c) for c in cols], schema=hits_table_schema())


def agipd_detector(geom, distance_mm: float, photon_energy_kev: float, good: np.ndarray):
    """:class:`~spicompute.geometry.Detector` for the unassembled AGIPD 1M layout."""
    from spicompute.geometry import Detector

    pos = geom.get_pixel_positions().reshape(-1, 3) * 1e3  # mm
    r = pos.copy()
    r[:, 2] += distance_mm
    dist = np.linalg.norm(r, axis=1)
    pixel_mm = float(geom.pixel_size) * 1e3
    solid = pixel_mm ** 2 * r[:, 2] / dist ** 3
    pol = 1.0 - (r[:, 0] / dist) ** 2
    return Detector(q=agipd_q(geom, distance_mm, photon_energy_kev), mask=good.reshape(-1),
                    solid_angle=solid, polarization=pol,
                    wavelength_nm=HC_KEV_NM / photon_energy_kev, distance_mm=float(distance_mm),
                    pixel_size_mm=pixel_mm)


# ----------------------------------------------------------------------------- the stage body
def ingest_run(data: dict, out: str | Path, hits_path: str | Path, *, stage: str = "frames",
               progress: bool = False) -> dict:
    """Stream the run of ``data.input`` into ``out`` (hits only) and ``hits_path``.

    Returns the metrics dict (frames read, hits, hit rate, threshold ...) plus the lit-pixel
    histogram under ``"_histogram"`` (edges, counts) for the caller to write.
    """
    cfg = EuxfelConfig.from_data(data)
    if cfg.distance_mm is None:
        raise ParameterError("data.distance_mm", "EuXFEL input needs the sample-detector distance in mm "
                             "(runs do not record it)")
    run, det = open_run(cfg)
    geom = load_agipd_geometry(cfg.geometry)
    energy, energy_source = photon_energy(run, cfg)
    user = load_user_mask(cfg.mask)
    good = static_mask(1)
    if user is not None:
        good &= user
    parts = sequence_partitions(run, det)
    if not parts:
        raise InputError(cfg.run_dir, "data.trains", "no detector data in the selected trains")
    n_trains = int(sum(len(p) for p in parts))
    unit = cfg.adu_per_photon if cfg.adu_per_photon else energy
    settings = {"unit": unit, "photon_threshold": cfg.photon_threshold,
                "trains_per_chunk": cfg.trains_per_chunk, "pulses": cfg.pulses}
    run_no = run_number(cfg.run_dir)
    log.info("EuXFEL run %s (run %d): %d trains in %d sequence partition(s), %.3f keV (%s), %s",
             cfg.run_dir, run_no, n_trains, len(parts), energy, energy_source,
             f"{cfg.adu_per_photon} ADU/photon" if cfg.adu_per_photon else "keV input")

    with dask_client(cfg.scheduler, "data.scheduler") as client:
        return _stream(cfg, data, out, hits_path, stage, progress, run_no, parts, n_trains, settings,
                       good, geom, energy, energy_source, unit, client)


def _stream(cfg, data, out, hits_path, stage, progress, run_no, parts, n_trains, settings, good, geom,
            energy, energy_source, unit, client) -> dict:
    """Threshold pass (auto) and streaming pass of :func:`ingest_run` on one client."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from spicompute.ingest.hitfinding import MAD_TO_SIGMA, resolve_threshold
    from spicompute.io.frames import _write_detector
    from spicompute.io.provenance import atomic_path, stamp

    lit_sample = None
    if cfg.hit_threshold == "auto":
        sample = threshold_sample(parts, cfg.threshold_trains)
        n_sample = int(sum(len(p) for p in sample))
        with tqdm(total=n_sample, desc="hit threshold", unit="train", disable=not progress) as bar:
            lit_sample = np.concatenate([r.lit for r in _map_partitions(
                cfg.run_dir, sample, settings, good, None, client, bar)])
        if lit_sample.size == 0:
            raise InputError(cfg.run_dir, "data.pulses", "no detector frames in the selection")
    threshold = resolve_threshold(lit_sample if lit_sample is not None else np.zeros(1),
                                  cfg.hit_threshold, cfg.hit_sigma)
    edges = histogram_edges(threshold, float(lit_sample.max()) if lit_sample is not None else 0.0)
    hist = np.zeros(HIST_BINS, np.int64)

    geom_det = agipd_detector(geom, cfg.distance_mm, energy, good)
    n_read = n_hits = photons_hits = 0
    for target in (out, hits_path):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp_frames = stack.enter_context(atomic_path(out))
        tmp_hits = stack.enter_context(atomic_path(hits_path))
        h5 = stack.enter_context(h5py.File(tmp_frames, "w"))
        stamp(h5, stage, {"data": data})
        writer = SparseFramesWriter(h5)
        table = stack.enter_context(pq.ParquetWriter(str(tmp_hits), hits_table_schema()))
        bar = stack.enter_context(tqdm(total=n_trains, desc="frames", unit="train", disable=not progress))
        for res in _map_partitions(cfg.run_dir, parts, settings, good, threshold, client, bar):
            n = len(res.lit)
            fid = n_read + np.arange(n, dtype=np.int64)
            is_hit = res.lit > threshold
            table.write_batch(hits_batch(fid, run_no, res.train_id, res.pulse_id, res.lit,
                                         res.photons, is_hit))
            writer.append(fid[is_hit], res.hits)
            hist += np.histogram(np.minimum(res.lit, edges[-1]), bins=edges)[0]
            n_read += n
            n_hits += int(is_hit.sum())
            photons_hits += int(res.photons[is_hit].sum())
        if n_read == 0:
            raise InputError(cfg.run_dir, "data.pulses", "no detector frames in the selection")
        if n_hits == 0:
            raise InputError(cfg.run_dir, "data.hit_threshold",
                             f"no hits among {n_read} frames (lit-pixel threshold {threshold:.1f})")
        writer.finish(N_PIXELS)
        _write_detector(h5.create_group("detector"), geom_det)
        h5["detector"].attrs["layout"] = "AGIPD 1M unassembled (module, slow scan, fast scan)"
        h5["detector"].attrs["module_shape"] = np.asarray(AGIPD_SHAPE, np.int64)
    metrics = {
        "source": "euxfel",
        "input": str(cfg.run_dir),
        "run": run_no,
        "trains_read": n_trains,
        "frames_read": n_read,
        "hits": n_hits,
        "hit_rate": n_hits / n_read,
        "hit_threshold": float(threshold),
        "threshold_rule": ("auto: median + hit_sigma x max(1.4826 MAD, sqrt(median), 1) of "
                           f"{len(lit_sample)} frames" if lit_sample is not None else "given"),
        "hit_sigma": cfg.hit_sigma,
        "photons_per_hit_mean": photons_hits / n_hits,
        "photon_energy_kev": energy,
        "photon_energy_source": energy_source,
        "unit_per_photon": float(unit),
        "unit": "ADU" if cfg.adu_per_photon else "keV",
        "photon_threshold": cfg.photon_threshold,
        "sequence_partitions": len(parts),
        "good_pixels": int(good.sum()),
    }
    if lit_sample is not None:
        m = float(np.median(lit_sample))
        metrics["lit_median"] = m
        metrics["lit_sigma"] = float(max(MAD_TO_SIGMA * np.median(np.abs(lit_sample - m)), np.sqrt(m), 1.0))
    metrics["_histogram"] = (edges, hist)
    return metrics
