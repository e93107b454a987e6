"""Helpers shared by the stage commands."""

from __future__ import annotations

import logging
import os

from spicompute.params import load_params, section


def stage_params(args, name: str) -> dict:
    """Section ``name`` of the parameter file given by ``--params``."""
    return section(load_params(args.params), name, args.params)


def all_params(args) -> dict:
    return load_params(args.params)


def progress_disabled(args) -> bool:
    """Progress bars off with --quiet or when not attached to a terminal in CI."""
    return bool(getattr(args, "quiet", False)) or os.environ.get("SPICOMPUTE_NO_PROGRESS") == "1"


def get_logger(stage: str) -> logging.Logger:
    return logging.getLogger(f"spicompute.{stage}")


# The pipeline's files as stages read them: option -> (default path, what it is).  One table, so
# that every stage names a file the same way and a moved default moves everywhere.
PIPELINE_FILES = {
    "frames": ("data/frames.h5", "frames file (frames stage)"),
    "averages": ("data/averages.h5", "class averages (classify2d)"),
    "ccmatrix": ("data/ccmatrix.h5", "CC matrix (ccmatrix)"),
    "embedding": ("results/parts/embed.parquet", "table with average_id and the CLPCA columns (embed)"),
    "orient": ("results/parts/orient.parquet", "fitted orientations: average_id, qw, qx, qy, qz, gain (orient)"),
    "select": ("results/parts/select.parquet", "training selection: average_id, selected (select; "
                                               "absent file: all averages)"),
    "latents": ("results/parts/vae.parquet", "encoded averages (vae)"),
    "model": ("models/vae.pt", "VAE weights (the .json side file beside it)"),
    "volumes": ("data/volumes.h5", "intensity volumes (volumes)"),
    "frames-table": ("results/frames.parquet", "frame -> average (classify2d)"),
    "truth": ("data/truth.h5", "simulation truth (frames stage; simulated data only)"),
}


def add_inputs(parser, *names: str, **overrides) -> None:
    """``--<name>`` options for pipeline files of :data:`PIPELINE_FILES`; ``overrides`` maps an
    option (``_`` for ``-``) to its own (default, help) where a stage reads the file differently."""
    for name in names:
        default, help_ = overrides.get(name.replace("-", "_"), PIPELINE_FILES[name])
        parser.add_argument(f"--{name}", default=default, help=help_)


def add_outputs(parser, stage: str, out: str, what: str, *, live: bool = False) -> None:
    """``--out`` (``what``), ``--metrics metrics/<stage>.json`` and, with ``live``, ``--live dvclive/<stage>``."""
    parser.add_argument("--out", default=out, help=what)
    parser.add_argument("--metrics", default=f"metrics/{stage}.json", help="metrics JSON")
    if live:
        parser.add_argument("--live", default=f"dvclive/{stage}", help="dvclive folder ('' to skip)")
