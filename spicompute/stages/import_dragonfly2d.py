"""Use an existing Dragonfly 2D classification in place of ``classify2d``.

Converts a Dragonfly ``output_NNN.h5`` (``recon_type = 2d``: ``intens``,
``inter_weight``, ``occupancies``, ``orientations``, ``scale``) plus its
detector file into our averages file, frames table and classify2d part
table, so the common-line stage can run on it directly.  Dragonfly does not
record the wavelength: give ``--wavelength-nm``.  See docs/classify2d.md.
"""

from __future__ import annotations

import logging

import pandas as pd

from spicompute.io.averages import write_averages
from spicompute.io.dragonfly2d import read_dragonfly2d
from spicompute.io.tables import write_table

COMMAND = "import-dragonfly2d"
HELP = "import Dragonfly 2D class averages (output_NNN.h5) as our averages + tables"

log = logging.getLogger("spicompute.import_dragonfly2d")


def add_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="Dragonfly output_NNN.h5 (2D recon)")
    parser.add_argument("--detector", required=True,
                        help="Dragonfly detector file used by that run (for ewald_rad)")
    parser.add_argument("--wavelength-nm", type=float, default=None,
                        help="X-ray wavelength in nm (required: Dragonfly does not store it)")
    parser.add_argument("--run", type=int, default=0, help="run number for these averages")
    parser.add_argument("--out", default="data/averages.h5", help="averages file (output)")
    parser.add_argument("--frames-table", default="results/frames.parquet")
    parser.add_argument("--part", default="results/parts/classify2d.parquet")


def run(args) -> int:
    averages, frames = read_dragonfly2d(args.output, args.detector, args.wavelength_nm,
                                        run=args.run)
    params = {"output": str(args.output), "detector": str(args.detector),
              "wavelength_nm": args.wavelength_nm, "run": args.run}
    write_averages(args.out, averages, stage=COMMAND, params=params)
    write_table(args.frames_table, frames, stage=COMMAND)
    write_table(args.part, pd.DataFrame({"average_id": averages.average_id,
                                         "run": averages.run, "model": averages.model,
                                         "n_frames": averages.n_frames}),
                stage=COMMAND)
    log.info("imported %d Dragonfly averages (%dx%d, dq %.4g rad/nm) to %s",
             averages.n_averages, averages.size, averages.size, averages.dq_nm, args.out)
    return 0
