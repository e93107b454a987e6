"""frames: simulate a data set (``data.input`` empty) or ingest the user's file.

Writes the frames file (photon counts + detector geometry, layout in
spicompute/io/frames.py) and, for simulations only, a separate truth file.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from spicompute.io.frames import write_frames
from spicompute.io.truth import write_truth
from spicompute.stages._common import all_params, get_logger, progress_disabled

COMMAND = "frames"
HELP = "simulate frames (data.input empty) or ingest CXI / Dragonfly / HDF5 frames"

log = get_logger("frames")


def add_arguments(parser):
    parser.add_argument("--out", default="data/frames.h5", help="frames file to write")
    parser.add_argument("--truth", default="data/truth.h5",
                        help="ground-truth file (simulation only; removed when ingesting)")


DATA_KEYS = ("input", "format", "dataset", "detector", "wavelength_nm", "geometry", "distance_mm",
             "pixel_size_mm", "empty_frames", "layout")


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
    if data.get("input"):
        from spicompute.ingest import ingest

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
    else:
        from spicompute.simulate import SimulationParams, simulate

        sim = SimulationParams.from_dict(section(params, "simulate", args.params))
        frames, truth = simulate(sim, progress=not progress_disabled(args))
        record = {"data": data, "simulate": section(params, "simulate", args.params)}
        write_frames(args.out, frames, layout=layout, stage=COMMAND, params=record)
        with _pair(args.out, truth_path):
            write_truth(truth_path, truth, params=record)
    photons = frames.photons_per_frame()
    log.info("%d frames x %d pixels, %.0f photons/frame (min %d, max %d) in %.1f s -> %s",
             frames.n_frames, frames.n_pixels, photons.mean(), photons.min(), photons.max(),
             time.perf_counter() - start, args.out)
    return 0
