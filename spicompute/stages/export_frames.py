"""export-frames: the member frames of a selection, as CXI, Dragonfly photons, or a CSV of ids.

A selection names averages (``selections/<name>.json``, drawn on the Landscape
page or written by hand); its frames are the member frames of those averages
in any bootstrap run (``results/frames.parquet``), in frame_id order
(:mod:`spicompute.frame_export`)::

    spicompute export-frames --selection cubes --format cxi --out exports/cubes.cxi
    spicompute export-frames --selection cubes --format dragonfly --out exports/cubes.emc   # + _detector.h5
    spicompute export-frames --selection cubes --format csv --out exports/cubes.csv

``<out>.frames.csv`` (or the CSV itself) maps the exported order to ``frame_id``
and, for EuXFEL input, ``run, train_id, pulse_id``.  An exported CXI is a valid
``data.input`` for the ``frames`` stage.
"""

from __future__ import annotations

from pathlib import Path

from spicompute.errors import InputError
from spicompute.stages._common import get_logger

COMMAND = "export-frames"
HELP = "write the member frames of a selection as CXI, Dragonfly photons or a CSV of frame ids"
OUTPUTS = ("out",)

log = get_logger("export-frames")


def add_arguments(parser):
    from spicompute.landscape.frame_export import FORMATS

    parser.add_argument("--selection", required=True, help="selection name (in --selections) or its .json path")
    parser.add_argument("--selections", default="selections", help="the selections folder")
    parser.add_argument("--format", choices=FORMATS, default="cxi")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--frames", default="data/frames.h5", help="frames of the run (frames stage)")
    parser.add_argument("--frames-table", default="results/frames.parquet", help="frame -> average")
    parser.add_argument("--parts", nargs="+", default=["results/parts/classify2d.parquet",
                                                       "results/parts/embed.parquet",
                                                       "results/parts/orient.parquet"],
                        help="per-average part tables (selection rules are evaluated on their columns)")
    parser.add_argument("--hits", default="results/hits.parquet", help="EuXFEL run ids per frame (optional)")


def run(args) -> int:
    from spicompute.io.tables import merge_parts, read_table
    from spicompute.landscape.frame_export import export_frames, selection_frame_ids
    from spicompute.landscape.selections import read_selection, selection_path

    sel_arg = Path(args.selection)
    if sel_arg.suffix == ".json":
        path = sel_arg
    else:
        try:
            path = selection_path(args.selections, args.selection)
        except ValueError as exc:
            raise InputError(args.selections, "selection", str(exc)) from None
    selection = read_selection(path)
    parts = [read_table(p) for p in args.parts if Path(p).exists() or p == args.parts[0]]
    try:
        averages = merge_parts(parts[0], parts[1:])
    except ValueError as exc:
        raise InputError(", ".join(args.parts), None, str(exc)) from None
    frames_table = read_table(args.frames_table)
    frame_ids = selection_frame_ids(selection, averages, frames_table, args.frames_table)
    hits = read_table(args.hits) if args.hits and Path(args.hits).exists() else None
    written = export_frames(args.frames, frame_ids, args.out, args.format, hits)
    log.info("selection %s: %d frames -> %s", selection["name"], len(frame_ids),
             ", ".join(str(p) for p in written))
    return 0
