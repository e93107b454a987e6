"""tables: join the per-stage part tables into results/averages.parquet.

DVC lets one stage own a file, so every stage that adds per-average columns
writes ``results/parts/<stage>.parquet`` (``average_id`` + its columns).
This stage left-joins them onto the classify2d part (one row per average),
which is the table users load with pandas and the dashboard reads.
"""

from __future__ import annotations

from pathlib import Path

from spicompute.errors import InputError
from spicompute.io.tables import merge_parts, read_table, write_table
from spicompute.stages._common import get_logger

COMMAND = "tables"
HELP = "join results/parts/*.parquet into results/averages.parquet"

log = get_logger("tables")


def add_arguments(parser):
    parser.add_argument("--base", default="results/parts/classify2d.parquet",
                        help="table with one row per average (average_id, run, model, n_frames)")
    parser.add_argument("--parts", nargs="*", default=[],
                        help="part tables to join on average_id (missing files are an error)")
    parser.add_argument("--out", default="results/averages.parquet")


def run(args) -> int:
    base = read_table(args.base)
    parts = [read_table(p) for p in args.parts]
    try:
        table = merge_parts(base, parts)
    except ValueError as exc:
        raise InputError(", ".join(args.parts), None, str(exc)) from exc
    write_table(args.out, table, stage=COMMAND)
    log.info("%d averages x %d columns -> %s (parts: %s)", len(table), len(table.columns),
             args.out, ", ".join(Path(p).stem for p in args.parts) or "none")
    return 0
