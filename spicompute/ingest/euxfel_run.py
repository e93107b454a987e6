"""A European XFEL run: configuration, files, photon energy, masks, partitions."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spicompute.errors import InputError, ParameterError, one_line
from spicompute.io.euxfel import AGIPD_SHAPE, HC_KEV_NM

log = logging.getLogger("spicompute.euxfel")

#: keys of the ``data`` section that only the EuXFEL path reads
EUXFEL_KEYS = ("photon_energy_kev", "adu_per_photon", "photon_threshold", "hit_threshold",
               "hit_sigma", "threshold_trains", "trains", "pulses", "trains_per_chunk", "mask",
               "scheduler")
RUN_FILE_PATTERNS = ("RAW-*.h5", "CORR-*.h5")
MODULE_PIXELS = AGIPD_SHAPE[1] * AGIPD_SHAPE[2]
N_PIXELS = AGIPD_SHAPE[0] * MODULE_PIXELS



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


# ----------------------------------------------------------------------------- the run


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
