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
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from spicompute.errors import InputError, ParameterError, one_line
from spicompute.execution import dask_client
from spicompute.io.euxfel import AGIPD_SHAPE, HC_KEV_NM, agipd_q, load_agipd_geometry, static_mask


def iter_run_photons(run_dir, photon_energy_kev: float, threshold: float = 0.5,
                     adu_per_photon: float | None = None, trains_per_chunk: int = 4,
                     train_slice: slice | None = None, good=None):
    """Stream a corrected (proc) AGIPD 1M run as photon-sparse chunks.

    Reads ``trains_per_chunk`` trains at a time (memory per chunk:
    16 x 512 x 128 x 4 B x frames-in-chunk, x2 for the mask), converts to
    photons (:func:`spicompute.ingest.hitfinding.to_photons`, keV unless
    ``adu_per_photon`` is given) and masks pixels flagged in the proc
    ``image.mask`` (non-zero = bad) or False in ``good`` ((16, 512, 128) bool).

    Yields (train_id (n,) uint64, pulse_id (n,) uint64, counts csr (n, P) int32).
    """
    import scipy.sparse as sp
    from extra_data import RunDirectory
    from extra_data.components import AGIPD1M

    from spicompute.ingest.hitfinding import to_photons

    try:
        run = RunDirectory(str(run_dir))
        if train_slice is not None:
            run = run.select_trains(train_slice)
        det = AGIPD1M(run)
    except Exception as exc:
        raise InputError(run_dir, "data.input", f"not a readable AGIPD 1M run ({exc})") from exc
    unit = adu_per_photon if adu_per_photon else photon_energy_kev
    P = int(np.prod(AGIPD_SHAPE))
    for part in det.split_trains(trains_per_part=trains_per_chunk):
        data = part.get_array("image.data")  # (module, train, pulse, ss, fs)
        ok = part.get_array("image.mask").values == 0
        if good is not None:
            ok &= np.asarray(good, dtype=bool)[:, None, None]
        n = to_photons(data.values, unit, threshold, mask=ok)
        nt, npulse = n.shape[1], n.shape[2]
        n = np.moveaxis(n, 0, 2).reshape(nt * npulse, P)  # frames in (train, pulse) order
        tid = np.repeat(data.coords["train"].values.astype(np.uint64), npulse)
        pid = np.tile(data.coords["pulse"].values.astype(np.uint64), nt)
        yield tid, pid, sp.csr_matrix(n)

log = logging.getLogger("spicompute.euxfel")

#: keys of the ``data`` section that only the EuXFEL path reads
EUXFEL_KEYS = ("photon_energy_kev", "adu_per_photon", "photon_threshold", "hit_threshold",
               "hit_sigma", "threshold_trains", "trains", "pulses", "trains_per_chunk", "mask",
               "scheduler")
RUN_FILE_PATTERNS = ("RAW-*.h5", "CORR-*.h5")
MODULE_PIXELS = AGIPD_SHAPE[1] * AGIPD_SHAPE[2]
N_PIXELS = AGIPD_SHAPE[0] * MODULE_PIXELS
HIST_BINS = 64


def is_run_directory(path) -> bool:
    """True for a directory holding EuXFEL run files (``RAW-*.h5`` or ``CORR-*.h5``)."""
    p = Path(path)
    return p.is_dir() and any(any(p.glob(pat)) for pat in RUN_FILE_PATTERNS)


def is_raw_run(path) -> bool:
    """Raw detector data (``RAW-*`` files, (data, gain) frames in ADU) unless CORR files exist."""
    return not any(Path(path).glob("CORR-*.h5"))


def parse_slice(value, name: str):
    """``all`` / "" / None -> None; ``"a:b"`` or ``"a:b:s"`` (python slice syntax) -> slice.

    Used for ``data.trains`` (train indices in the run) and ``data.pulses`` (pulse indices
    within a train); ``data.pulses`` may also be a list of pulse ids.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return None
    if isinstance(value, (list, tuple)) and name == "data.pulses":
        try:
            ids = [int(v) for v in value]
        except (TypeError, ValueError):
            raise ParameterError(name, f"a list must hold integer pulse ids, got {value!r}") from None
        if not ids or min(ids) < 0:
            raise ParameterError(name, f"pulse ids must be >= 0 and not empty, got {value!r}")
        return ids
    if not isinstance(value, str) or not re.fullmatch(r"\s*-?\d*\s*:\s*-?\d*\s*(:\s*\d*\s*)?", value):
        hint = " (quote it: YAML reads 10:20 as the number 620)" if isinstance(value, int) else ""
        raise ParameterError(name, f"must be 'all' or a slice 'start:stop[:step]', got {value!r}{hint}")
    parts = [p.strip() for p in value.split(":")]
    nums = [int(p) if p else None for p in parts]
    if len(nums) == 3 and nums[2] is not None and nums[2] < 1:
        raise ParameterError(name, f"slice step must be >= 1, got {value!r}")
    return slice(*nums)


@dataclass
class EuxfelConfig:
    """Validated EuXFEL settings from the ``data`` section."""

    run_dir: Path
    photon_energy_kev: float | None = None
    adu_per_photon: float | None = None
    photon_threshold: float = 0.5
    hit_threshold: object = "auto"
    hit_sigma: float = 5.0
    threshold_trains: int = 100
    trains: slice | None = None
    pulses: object = None
    trains_per_chunk: int = 1
    mask: str = ""
    scheduler: str = ""
    geometry: str = ""
    distance_mm: float | None = None
    raw_data: dict = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: dict) -> "EuxfelConfig":
        from spicompute.params import in_range, positive

        def opt_pos(key):
            v = data.get(key)
            return None if v in (None, "") else positive(f"data.{key}", v)

        hit = data.get("hit_threshold", "auto")
        if hit in (None, "", "auto"):
            hit = "auto"
        else:
            hit = positive("data.hit_threshold", hit, allow_zero=True)
        scheduler = data.get("scheduler") or ""
        if not isinstance(scheduler, str):
            raise ParameterError("data.scheduler", f"must be '', 'local:N' or an address, got {scheduler!r}")
        geometry = data.get("geometry") or ""
        if geometry and Path(geometry).suffix != ".geom":
            raise InputError(geometry, "data.geometry",
                             "AGIPD 1M geometry must be a CrystFEL .geom file (extra-geom has no "
                             "EuXFEL-HDF5 geometry reader for AGIPD 1M); leave empty for the default")
        return cls(
            run_dir=Path(data["input"]),
            photon_energy_kev=opt_pos("photon_energy_kev"),
            adu_per_photon=opt_pos("adu_per_photon"),
            photon_threshold=in_range("data.photon_threshold", data.get("photon_threshold", 0.5),
                                      0.0, 1.0, low_open=True),
            hit_threshold=hit,
            hit_sigma=positive("data.hit_sigma", data.get("hit_sigma", 5.0)),
            threshold_trains=positive("data.threshold_trains", data.get("threshold_trains", 100),
                                      integer=True),
            trains=parse_slice(data.get("trains", "all"), "data.trains"),
            pulses=parse_slice(data.get("pulses", "all"), "data.pulses"),
            trains_per_chunk=positive("data.trains_per_chunk", data.get("trains_per_chunk", 1),
                                      integer=True),
            mask=data.get("mask") or "",
            scheduler=scheduler,
            geometry=geometry,
            distance_mm=opt_pos("distance_mm"),
            raw_data=dict(data),
        )


# ----------------------------------------------------------------------------- the run
def open_run(cfg: EuxfelConfig):
    """(DataCollection with the train selection, AGIPD1M component) or a one-line error."""
    from extra_data import by_index
    from extra_data.components import AGIPD1M

    path = cfg.run_dir
    if not path.is_dir():
        raise InputError(path, "data.input", "run directory not found")
    try:
        os.listdir(path)
    except PermissionError:
        raise InputError(path, "data.input", "permission denied: the run directory cannot be read") from None
    if not is_run_directory(path):
        raise InputError(path, "data.input", "no EuXFEL run files (RAW-*.h5 or CORR-*.h5) in this directory")
    run = open_run_directory(path)
    if cfg.trains is not None:
        n_all = len(run.train_ids)
        picked = range(n_all)[cfg.trains]
        if len(picked) == 0:
            raise ParameterError("data.trains", f"selects no train of the {n_all} in {path}")
        run = run.select_trains(by_index[cfg.trains])
    try:
        det = AGIPD1M(run, raw=is_raw_run(path))
    except Exception as exc:
        raise InputError(path, "data.input", "no AGIPD 1M detector source (SPB_DET_AGIPD1M-1/DET or "
                         f"/CORR ...CH0) in the run ({one_line(exc, 200)})") from exc
    return run, det


def open_run_directory(path: Path, **kwargs):
    """``extra_data.RunDirectory`` that fails with one line naming the first unreadable file.

    extra-data skips a fake, truncated or unreadable file with lines on
    stderr and carries on with the rest of the run; frames would then be
    missing without an error, so such a file is an error here.
    """
    from extra_data import RunDirectory

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            run = RunDirectory(str(path), **kwargs)
    except Exception as exc:  # extra-data raises several kinds
        skipped = _skipped_files(said.getvalue())
        if skipped:
            raise InputError(path / skipped[0][0], "data.input", f"unreadable run file ({skipped[0][1]})") from exc
        raise InputError(path, "data.input", f"not a readable EuXFEL run ({one_line(exc, 200)})") from exc
    skipped = _skipped_files(said.getvalue())
    if skipped:
        more = f"; {len(skipped) - 1} more unreadable file(s)" if len(skipped) > 1 else ""
        raise InputError(path / skipped[0][0], "data.input",
                         f"unreadable run file ({skipped[0][1]}){more}: repair or remove it")
    return run


def _skipped_files(text: str) -> list[tuple[str, str]]:
    """(file name, reason) of each 'Skipping file' report of extra-data."""
    found = re.findall(r"Skipping file (\S+)\s*\n\s*\(error was: (.*)\)", text)
    return [(Path(name).name, one_line(reason, 200)[:160]) for name, reason in found]


def run_number(path: Path) -> int:
    """Run number from the file names (``CORR-R0142-...`` -> 142), -1 when absent."""
    for pat in RUN_FILE_PATTERNS:
        for f in sorted(path.glob(pat)):
            m = re.match(r"(?:RAW|CORR)-R(\d+)-", f.name)
            if m:
                return int(m.group(1))
    return -1


def sequence_partitions(run, det) -> list[np.ndarray]:
    """Selected train ids grouped by the detector's sequence files, in train order."""
    src = det.modno_to_source[min(det.modno_to_source)]
    selected = np.asarray(run.train_ids, dtype=np.uint64)
    parts = []
    for f in sorted(run[src].files, key=lambda f: (int(f.train_ids[0]) if len(f.train_ids) else 0)):
        tids = np.intersect1d(np.asarray(f.train_ids, dtype=np.uint64), selected)
        if len(tids):
            parts.append(tids)
    return parts


def _xgm_energy(run) -> tuple[float, str] | None:
    """Photon energy (keV) from an XGM's ``pulseEnergy.wavelengthUsed`` (nm), if positive."""
    for src in sorted(run.control_sources):
        if "XGM" not in src:
            continue
        try:
            values = np.asarray(run[src, "pulseEnergy.wavelengthUsed"].ndarray(), dtype=np.float64)
        except Exception:  # key absent in this XGM
            continue
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            return HC_KEV_NM / float(np.median(values)), f"{src} pulseEnergy.wavelengthUsed"
    return None


def raw_sibling(run_dir: Path) -> Path | None:
    """``.../proc/r0034`` -> ``.../raw/r0034`` when it exists (the XGM lives in raw data)."""
    if run_dir.parent.name == "proc":
        raw = run_dir.parent.parent / "raw" / run_dir.name
        if raw.is_dir():
            return raw
    return None


def photon_energy(run, cfg: EuxfelConfig) -> tuple[float, str]:
    """Photon energy (keV) and where it came from: the run's XGM ``pulseEnergy.wavelengthUsed``
    (nm) when it records a positive value, else that of the matching ``raw/r<run>`` run
    (a ``proc/r<run>`` directory holds only detector data), else ``data.photon_energy_kev``."""
    found = _xgm_energy(run)
    if found is not None:
        return found[0], f"run ({found[1]})"
    raw = raw_sibling(cfg.run_dir)
    if raw is not None:
        from extra_data import RunDirectory, by_id

        try:
            found = _xgm_energy(RunDirectory(str(raw), include="*-DA*.h5").select_trains(
                by_id[[int(t) for t in run.train_ids]]))
        except Exception as exc:  # no DA files, unreadable: fall back to the parameter
            log.info("no photon energy from %s (%s)", raw, one_line(exc, 200))
            found = None
        if found is not None:
            return found[0], f"raw run {raw} ({found[1]})"
    if cfg.photon_energy_kev is None:
        raise ParameterError("data.photon_energy_kev", f"the run {cfg.run_dir} does not record the "
                             "photon energy; give it in keV")
    return float(cfg.photon_energy_kev), "params"


def load_user_mask(path: str) -> np.ndarray | None:
    """User mask file -> (16, 512, 128) bool, True = good pixel.

    HDF5 with a dataset ``mask`` (or ``data/mask``) or a ``.npy`` file, shape (16, 512, 128)
    or (P,) with P = 1,048,576; non-zero = good (the frames file convention).
    """
    if not path:
        return None
    p = Path(path)
    if not p.exists():
        raise InputError(p, "data.mask", "mask file not found")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(p, "data.mask", f"not a readable .npy file ({one_line(exc, 200)})") from exc
        field_name = "data.mask"
    else:
        from spicompute.io.frames import open_h5

        with open_h5(p) as h5:
            field_name = next((k for k in ("mask", "data/mask") if k in h5), None)
            if field_name is None:
                raise InputError(p, "mask", "dataset missing (expected 'mask' or 'data/mask')")
            arr = h5[field_name][()]
    if arr.size != N_PIXELS:
        raise InputError(p, field_name, f"must hold {AGIPD_SHAPE} = {N_PIXELS} pixels, got {arr.shape}")
    return np.asarray(arr).reshape(AGIPD_SHAPE) != 0


# ----------------------------------------------------------------------------- one partition
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


# ----------------------------------------------------------------------------- scheduling
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
