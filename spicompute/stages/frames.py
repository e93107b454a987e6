"""frames: simulate a data set (``data.input`` empty) or ingest the user's file or EuXFEL run.

Writes the frames file (photon counts + detector geometry, layout in
spicompute/io/frames.py) and, for simulations only, a separate truth file.
A directory as ``data.input`` is a EuXFEL run (AGIPD 1M), streamed with photon
conversion and hit finding; only hits are written (spicompute/ingest/euxfel.py,
docs/euxfel.md).  For every input the stage also writes the per-frame table
(``--hits``), ``--metrics`` and the lit-pixel histogram (spicompute/ingest/report.py).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from spicompute.errors import InputError
from spicompute.ingest.euxfel_run import EUXFEL_KEYS
from spicompute.ingest.report import frameset_report, write_json, write_lit_histogram
from spicompute.io.frames import write_frames
from spicompute.io.truth import write_truth
from spicompute.stages._common import all_params, get_logger, progress_disabled

COMMAND = "frames"
HELP = "simulate frames (data.input empty) or ingest CXI / Dragonfly / HDF5 frames or a EuXFEL run"

log = get_logger("frames")


def add_arguments(parser):
    parser.add_argument("--out", default="data/frames.h5", help="frames file to write")
    parser.add_argument("--truth", default="data/truth.h5",
                        help="ground-truth file (simulation only; removed when ingesting)")
    parser.add_argument("--hits", default=None,
                        help="per-frame table: frame_id, run, train_id, pulse_id, lit_pixels, photons, "
                             "is_hit (default: hits.parquet beside --out; dvc.yaml: results/hits.parquet)")
    parser.add_argument("--metrics", default=None,
                        help="frames metrics JSON (default: frames_metrics.json beside --out)")
    parser.add_argument("--lit-histogram", default=None,
                        help="lit-pixel histogram CSV, a DVC plot (default: beside --out)")


DATA_KEYS = ("input", "format", "dataset", "detector", "wavelength_nm", "geometry", "distance_mm",
             "pixel_size_mm", "empty_frames", "layout") + EUXFEL_KEYS


@contextlib.contextmanager
def _pair(frames_path, truth_path):
    """If the truth write fails (full disk), remove the frames file just written with it and any
    older truth: a frames file without its own truth is not a result of this stage."""
    try:
        yield
    except BaseException:
        for path in (Path(frames_path), Path(truth_path)):
            path.unlink(missing_ok=True)
        raise


def run(args) -> int:
    from spicompute.params import section, with_defaults

    params = all_params(args)
    data = section(params, "data", args.params)
    with_defaults("data", data, DATA_KEYS)  # a typo ("inptu") is an error, not a silent simulation
    layout = data.get("layout", "auto") or "auto"
    start = time.perf_counter()
    truth_path = Path(args.truth)
    beside = Path(args.out).parent
    args.hits = args.hits or str(beside / "hits.parquet")
    args.metrics = args.metrics or str(beside / "frames_metrics.json")
    args.lit_histogram = args.lit_histogram or str(beside / "frames_lit_histogram.csv")
    fmt = data.get("format", "auto") or "auto"
    if data.get("input") and Path(data["input"]).is_dir() and fmt != "auto":
        raise InputError(data["input"], "data.input", f"is a directory, but data.format {fmt!r} "
                         "reads a file (format auto takes a directory as a EuXFEL run)")
    if data.get("input") and Path(data["input"]).is_dir():  # a EuXFEL run: stream, hits only
        from spicompute.ingest.euxfel import ingest_run

        metrics = ingest_run(data, args.out, args.hits, stage=COMMAND,
                             progress=not progress_disabled(args))
        edges, hist = metrics.pop("_histogram")
        _write_empty_truth(truth_path, data)
        write_lit_histogram(args.lit_histogram, edges, hist, metrics["hit_threshold"])
        write_json(args.metrics, metrics)
        log.info("%d of %d frames are hits (%.2f %%, lit-pixel threshold %.1f) in %.1f s -> %s",
                 metrics["hits"], metrics["frames_read"], 100 * metrics["hit_rate"],
                 metrics["hit_threshold"], time.perf_counter() - start, args.out)
        return 0
    if data.get("input"):
        from spicompute.ingest.blockwise import copy_frames_stream, streams_on_ingest
        from spicompute.ingest.files import ingest

        if streams_on_ingest(data):  # a large file in our layout: validated and copied block by block
            frames = copy_frames_stream(data["input"], args.out, empty_frames=data.get("empty_frames") or "error",
                                        stage=COMMAND, params={"data": data})
        else:
            frames = ingest(data)
            write_frames(args.out, frames, layout=layout, stage=COMMAND, params={"data": data})
        if truth_path.exists():  # a stale truth would describe other frames
            truth_path.unlink()
        # DVC needs the declared output to exist: an empty truth marks "no truth".
        import h5py

        from spicompute.io.provenance import atomic_path, stamp

        with _pair(args.out, truth_path), atomic_path(truth_path) as tmp, h5py.File(tmp, "w") as h5:
            stamp(h5, COMMAND, {"data": data})
            h5.attrs["simulated"] = False
        source = "file"
    else:
        from spicompute.simulation.simulate import SimulationParams, simulate

        sim = SimulationParams.from_dict(section(params, "simulate", args.params))
        frames, truth = simulate(sim, progress=not progress_disabled(args))
        record = {"data": data, "simulate": section(params, "simulate", args.params)}
        write_frames(args.out, frames, layout=layout, stage=COMMAND, params=record)
        with _pair(args.out, truth_path):
            write_truth(truth_path, truth, params=record)
        source = "simulate"
    metrics, (edges, hist) = frameset_report(frames, args.hits, source)
    if source == "file":
        metrics["input"] = str(data["input"])
    write_lit_histogram(args.lit_histogram, edges, hist, None)
    write_json(args.metrics, metrics)
    photons = frames.photons_per_frame()
    log.info("%d frames x %d pixels, %.0f photons/frame (min %d, max %d) in %.1f s -> %s",
             frames.n_frames, frames.n_pixels, photons.mean(), photons.min(), photons.max(),
             time.perf_counter() - start, args.out)
    return 0


def _write_empty_truth(truth_path: Path, data: dict) -> None:
    """A EuXFEL run has no truth; DVC needs the declared output: an empty one marks that."""
    import h5py

    from spicompute.io.provenance import atomic_path, stamp

    if truth_path.exists():  # a stale truth would describe other frames
        truth_path.unlink()
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(truth_path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, COMMAND, {"data": data})
        h5.attrs["simulated"] = False
