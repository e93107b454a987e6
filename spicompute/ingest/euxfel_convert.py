"""European XFEL partitions -> photon-sparse frames and hits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from spicompute.ingest.euxfel_run import MODULE_PIXELS, N_PIXELS, is_raw_run
from spicompute.io.euxfel import AGIPD_SHAPE


@dataclass
class PartResult:
    """What one partition sends back: per-frame table and the hits (photon-sparse)."""

    train_id: np.ndarray   # (n,) uint64
    pulse_id: np.ndarray   # (n,) uint64
    lit: np.ndarray        # (n,) int64 lit pixels (>= 1 photon, good pixels)
    photons: np.ndarray    # (n,) int64 photons on good pixels
    hits: sp.csr_matrix | None  # (n_hits, P) int32, rows of frames with lit > threshold


def _frame_keys(tid, pid) -> np.ndarray:
    return (np.asarray(tid, dtype=np.uint64) << np.uint64(16)) | np.asarray(pid, dtype=np.uint64)


# ----------------------------------------------------------------------------- one partition


def _module_frames(det_m, key: str, tids, pulses, raw: bool):
    """(values (n, 512, 128), train ids, pulse ids) of one module for trains ``tids``."""
    import warnings

    from extra_data import by_id, by_index

    with warnings.catch_warnings():  # a module without some of the trains: aligned by the caller
        warnings.filterwarnings("ignore", message="Given train IDs not found")
        kd = det_m[key].select_trains(by_id[list(map(int, tids))])
    if pulses is not None:
        kd = kd.select_pulses(by_id[pulses] if isinstance(pulses, list) else by_index[pulses])
    arr = kd.ndarray()[0]
    if raw and key == "image.data" and arr.ndim == 4:  # (n, data/gain, ss, fs): analogue data
        arr = arr[:, 0]
    return arr, np.asarray(kd.train_id_coordinates(), np.uint64), np.asarray(kd.pulse_id_coordinates(), np.uint64)


def sparse_photons(values: np.ndarray, unit: float, threshold: float, good: np.ndarray,
                   proc_mask: np.ndarray | None = None):
    """Photon-sparse conversion of module frames, identical to :func:`to_photons` + masks.

    values : (n, 512, 128) keV or ADU (float or integer dtype).
    unit : keV (photon energy) or ADU per photon; threshold : rounding threshold in photons.
    good : (512, 128) bool, True = usable pixel; proc_mask : (n, 512, 128), non-zero = bad.
    Returns (frame (k,) int64, pixel (k,) int64 within the module, photons (k,) int32) for
    the k non-zero pixels.  Only the pixels at or above the threshold (a small share of a
    photon-sparse frame) are converted, so the cost is ~2 passes over the module data.
    """
    from spicompute.ingest.hitfinding import to_photons

    values = np.asarray(values)
    lo = threshold * unit * (1.0 - 1e-6)  # a superset; the exact rule runs on the candidates
    if values.dtype.kind in "iu":
        lo = np.ceil(lo)
    flat = values.reshape(-1)
    if values.dtype.kind in "iu":
        lo = min(lo, float(np.iinfo(values.dtype).max))
    idx = np.flatnonzero(flat >= (values.dtype.type(lo) if values.dtype.kind in "iu" else np.float32(lo)))
    pixel = idx % MODULE_PIXELS
    keep = good.reshape(-1)[pixel]
    if proc_mask is not None:
        keep &= proc_mask.reshape(-1)[idx] == 0
    idx, pixel = idx[keep], pixel[keep]
    count = to_photons(flat[idx], unit, threshold)
    nz = count > 0
    return idx[nz] // MODULE_PIXELS, pixel[nz], count[nz]


def process_partition(run_dir: str, train_ids, settings: dict, good: np.ndarray,
                      threshold: float | None, progress=None) -> PartResult:
    """Convert and hit-find the trains ``train_ids`` of the run (one task).

    settings : unit (keV or ADU per photon), photon_threshold, trains_per_chunk, pulses.
    good : (16, 512, 128) bool static/user good-pixel mask.
    threshold : lit-pixel hit threshold; None -> lit counts only (threshold pass).
    progress : optional callable(n_trains) called after each chunk (in-process progress bar).
    """
    from extra_data import RunDirectory, by_id
    from extra_data.components import AGIPD1M

    logging.getLogger("extra_data").setLevel(logging.WARNING)  # one INFO line per component
    run = RunDirectory(str(run_dir)).select_trains(by_id[list(map(int, train_ids))])
    raw = is_raw_run(run_dir)
    det = AGIPD1M(run, raw=raw)
    modules = sorted(det.modno_to_source)
    per_module = {m: AGIPD1M(run, modules=[m], raw=raw) for m in modules}
    has_mask = (not raw) and "image.mask" in run[det.modno_to_source[modules[0]]].keys()
    unit = float(settings["unit"])
    t = float(settings["photon_threshold"])
    pulses = settings.get("pulses")
    step = int(settings["trains_per_chunk"])
    out_t, out_p, out_lit, out_ph, out_hits = [], [], [], [], []
    train_ids = np.asarray(train_ids, dtype=np.uint64)
    for start in range(0, len(train_ids), step):
        tids = train_ids[start:start + step]
        ref = det["image.data"].select_trains(by_id[list(map(int, tids))])
        if pulses is not None:
            from extra_data import by_index

            ref = ref.select_pulses(by_id[pulses] if isinstance(pulses, list) else by_index[pulses])
        ref_t = np.asarray(ref.train_id_coordinates(), np.uint64)
        ref_p = np.asarray(ref.pulse_id_coordinates(), np.uint64)
        n = len(ref_t)
        if n == 0:
            continue
        ref_keys = _frame_keys(ref_t, ref_p)
        lit = np.zeros(n, np.int64)
        photons = np.zeros(n, np.int64)
        blocks = [None] * AGIPD_SHAPE[0]
        for m in modules:
            values, mt, mp = _module_frames(per_module[m], "image.data", tids, pulses, raw)
            proc_mask = None
            if has_mask:
                proc_mask, _, _ = _module_frames(per_module[m], "image.mask", tids, pulses, raw)
            frame, pixel, count = sparse_photons(values, unit, t, good[m], proc_mask)
            del values, proc_mask
            keys = _frame_keys(mt, mp)
            if len(keys) != n or np.any(keys != ref_keys):  # module lacks some frames: align
                order = np.argsort(ref_keys)
                pos = np.searchsorted(ref_keys[order], keys)
                found = (pos < n) & (ref_keys[order[np.minimum(pos, n - 1)]] == keys)
                row_of = np.where(found, order[np.minimum(pos, n - 1)], -1)
                frame = row_of[frame]
                keep = frame >= 0
                frame, pixel, count = frame[keep], pixel[keep], count[keep]
            lit += np.bincount(frame, minlength=n)
            photons += np.bincount(frame, weights=count, minlength=n).astype(np.int64)
            if threshold is not None:
                blocks[m] = sp.csr_matrix((count, (frame, pixel)), shape=(n, MODULE_PIXELS),
                                          dtype=np.int32)
        out_t.append(ref_t)
        out_p.append(ref_p)
        out_lit.append(lit)
        out_ph.append(photons)
        if threshold is not None:
            hit_rows = np.flatnonzero(lit > threshold)
            cols = [blocks[m][hit_rows] if blocks[m] is not None
                    else sp.csr_matrix((len(hit_rows), MODULE_PIXELS), dtype=np.int32)
                    for m in range(AGIPD_SHAPE[0])]
            out_hits.append(sp.hstack(cols, format="csr", dtype=np.int32))
        if progress is not None:
            progress(len(tids))
    cat = (lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))
    hits = None
    if threshold is not None:
        hits = sp.vstack(out_hits, format="csr", dtype=np.int32) if out_hits else \
            sp.csr_matrix((0, N_PIXELS), dtype=np.int32)
    return PartResult(cat(out_t, np.uint64), cat(out_p, np.uint64), cat(out_lit, np.int64),
                      cat(out_ph, np.int64), hits)


def _map_partitions(run_dir, parts, settings, good, threshold, client, bar):
    """Yield PartResult per partition, in partition order, in-process (client None) or on
    Dask with at most 2 x workers partitions in flight."""
    if client is None:
        for tids in parts:
            yield process_partition(str(run_dir), tids, settings, good, threshold,
                                    progress=bar.update if bar is not None else None)
        return
    workers = max(1, sum(client.nthreads().values()))
    window = 2 * workers  # bounded: at most this many partitions' results held at once
    good_f = client.scatter(good, broadcast=True)
    futures = []
    nxt = 0
    while nxt < len(parts) and len(futures) < window:
        futures.append((parts[nxt], client.submit(process_partition, str(run_dir), parts[nxt],
                                                  settings, good_f, threshold, pure=False)))
        nxt += 1
    while futures:
        tids, fut = futures.pop(0)
        result = fut.result()
        if bar is not None:
            bar.update(len(tids))
        if nxt < len(parts):
            futures.append((parts[nxt], client.submit(process_partition, str(run_dir), parts[nxt],
                                                      settings, good_f, threshold, pure=False)))
            nxt += 1
        yield result


def threshold_sample(parts: list[np.ndarray], n_trains: int) -> list[np.ndarray]:
    """``n_trains`` train ids spread evenly over the partitions (all when fewer), grouped."""
    all_t = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    if len(all_t) <= n_trains:
        return parts
    pick = set(all_t[np.unique(np.linspace(0, len(all_t) - 1, n_trains).round().astype(int))].tolist())
    out = [np.asarray([t for t in p if int(t) in pick], dtype=np.uint64) for p in parts]
    return [p for p in out if len(p)]


# ----------------------------------------------------------------------------- scheduling
