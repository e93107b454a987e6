"""place: put averages from any averages file into a reference landscape.

Loads a regressor trained by ``spicompute regress`` (weights loaded with
``weights_only=True``, architecture and standardisation from the JSON side
file), computes the same rotation-invariant features and writes one row per
average: ``average_id, run, model, nn_1..nn_3``.  Example::

    spicompute place --model models/regressor.pt --averages other.h5 \\
        --out results/placed/other.parquet
"""

from __future__ import annotations

import pandas as pd

from spicompute.stages._common import get_logger

COMMAND = "place"
OUTPUTS = ("out",)   # --model is an input here
HELP = "predict CLPCA coordinates of new averages with a trained regressor"

log = get_logger("place")


def add_arguments(parser):
    parser.add_argument("--model", default="models/regressor.pt", help="regressor weights (.pt + .json)")
    parser.add_argument("--averages", required=True, help="averages file to place")
    parser.add_argument("--out", required=True, help="Parquet table to write")
    parser.add_argument("--label", default="", help="optional label column value (e.g. 'bootstrap 3')")


def place(model_path, averages_path) -> pd.DataFrame:
    """Table of predicted coordinates for every average of a file."""
    from spicompute.errors import InputError
    from spicompute.io.averages import read_averages
    from spicompute.landscape.features import rotation_invariant_features
    from spicompute.landscape.regressor import load_regressor

    reg = load_regressor(model_path)
    avg = read_averages(averages_path)
    if reg.features.r_max > avg.size // 2 - 1:
        raise InputError(averages_path, "averages/intensity",
                         f"grid {avg.size} too small for the model's r_max {reg.features.r_max}")
    dq = reg.info.get("dq_nm")
    if dq is not None and abs(avg.dq_nm / float(dq) - 1.0) > 0.01:
        raise InputError(averages_path, "averages@dq_nm",
                         f"{avg.dq_nm:.5g} rad/nm differs from the model's {float(dq):.5g}: features are "
                         "per grid step, so the grids must match (resample the averages)")
    x = rotation_invariant_features(avg.intensity, avg.valid, reg.features)
    if x.shape[1] != reg.x_scale.mean.shape[0]:
        raise InputError(averages_path, "averages/intensity",
                         f"gives {x.shape[1]} features, the model expects {reg.x_scale.mean.shape[0]}")
    pred = reg.predict_features(x)
    table = pd.DataFrame({"average_id": avg.average_id, "run": avg.run, "model": avg.model})
    for i in range(pred.shape[1]):
        table[f"nn_{i + 1}"] = pred[:, i]
    return table


def run(args) -> int:
    from spicompute.io.tables import write_table

    table = place(args.model, args.averages)
    if args.label:
        table["label"] = args.label
    write_table(args.out, table, stage=COMMAND)
    log.info("placed %d averages -> %s", len(table), args.out)
    return 0
