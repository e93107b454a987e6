"""regress: train the absolute-embedding regressor (features -> CLPCA coordinates).

Rotation-invariant features of every average (spicompute/landscape/features.py) are
mapped by an MLP (spicompute/landscape/regressor.py) to the embedding coordinates
(default pc_1..pc_3 of the embed stage).  Writes the model (state dict +
JSON side file), per-average predictions with their split, validation
metrics, and per-epoch losses with dvclive.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import add_inputs, add_outputs, get_logger, stage_params

COMMAND = "regress"
HELP = "train the MLP that places averages in the CLPCA landscape (rotation-invariant features)"

log = get_logger("regress")


def add_arguments(parser):
    add_inputs(parser, "averages", "embedding")
    parser.add_argument("--model", default="models/regressor.pt",
                        help="weights to write (a .json side file is written beside it)")
    add_outputs(parser, COMMAND, "results/parts/regress.parquet", "predictions table", live=True)


KNOWN = ("targets", "q_min_nm", "q_max_nm", "min_counts", "n_theta", "order_a", "order_b", "log", "log_floor",
         "hidden", "learning_rate", "weight_decay", "batch_size", "max_epochs", "patience", "val_fraction",
         "seed", "threads")


def feature_params_from(p: dict, averages, source: str = "averages"):
    """Feature parameters with the radial range resolved from the averages (q in rad/nm or auto).

    Returns (FeatureParams in grid steps of the averages, resolved QRange).
    """
    import math

    from spicompute.landscape.features import FeatureParams
    from spicompute.params import boolean, integer, positive, with_defaults
    from spicompute.qrange import auto_or_positive, resolve_q_range

    with_defaults("regress", p, KNOWN)
    q_min = auto_or_positive("regress.q_min_nm", p.get("q_min_nm", "auto"), allow_zero=True)
    q_max = auto_or_positive("regress.q_max_nm", p.get("q_max_nm", "auto"))
    min_counts = positive("regress.min_counts", p.get("min_counts", 1.0))
    qr = resolve_q_range(averages, q_min, q_max, min_counts=min_counts, section="regress", source=source)
    r_min = int(math.ceil(qr.q_min_nm / averages.dq_nm - 1e-9))
    r_max = int(math.floor(qr.q_max_nm / averages.dq_nm + 1e-9))
    r_max = min(r_max, averages.size // 2 - 1)
    fp = FeatureParams(r_min=r_min, r_max=r_max,
                       n_theta=integer("regress.n_theta", p.get("n_theta", 180), minimum=2),
                       order_a=positive("regress.order_a", p.get("order_a", 10.0), allow_zero=True),
                       order_b=positive("regress.order_b", p.get("order_b", 0.25), allow_zero=True),
                       log=boolean("regress.log", p.get("log", True)),
                       log_floor=positive("regress.log_floor", p.get("log_floor", 1e-3)))
    return fp, qr


def train_config_from(p: dict):
    from spicompute.landscape.regressor import TrainConfig
    from spicompute.params import in_range, integer, positive, with_defaults

    with_defaults("regress", p, KNOWN)  # a typo is an error before any work
    hidden = p.get("hidden", [512, 128, 64, 32])
    if not isinstance(hidden, (list, tuple)):
        raise ParameterError("regress.hidden", f"must be a list of layer widths, got {hidden!r}")
    return TrainConfig(hidden=tuple(integer("regress.hidden", h, minimum=1) for h in hidden),
                       learning_rate=positive("regress.learning_rate", p.get("learning_rate", 1e-3)),
                       weight_decay=positive("regress.weight_decay", p.get("weight_decay", 1e-5), allow_zero=True),
                       batch_size=integer("regress.batch_size", p.get("batch_size", 64), minimum=1),
                       max_epochs=integer("regress.max_epochs", p.get("max_epochs", 300), minimum=1),
                       patience=integer("regress.patience", p.get("patience", 30), minimum=0),
                       val_fraction=in_range("regress.val_fraction", p.get("val_fraction", 0.2), 0, 1,
                                             low_open=True, high_open=True),
                       seed=integer("regress.seed", p.get("seed", 0), minimum=0)).validate()


def _targets(path: str, ids: np.ndarray, names: list[str]) -> np.ndarray:
    from spicompute.io.tables import rows_for

    y = rows_for(path, ids, names).to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise InputError(path, ",".join(names), "contains NaN or Inf")
    return y


def run(args) -> int:
    import torch

    from spicompute.io.averages import read_averages
    from spicompute.io.provenance import write_json_atomic
    from spicompute.io.tables import write_table
    from spicompute.landscape.features import rotation_invariant_features
    from spicompute.landscape.regressor import regression_metrics, save_regressor, train_regressor
    from spicompute.params import integer

    p = stage_params(args, "regress")
    config = train_config_from(p)
    names = list(p.get("targets", ["pc_1", "pc_2", "pc_3"]))
    threads = integer("regress.threads", p.get("threads", 0), minimum=0)
    if threads > 0:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    avg = read_averages(args.averages)
    if avg.n_averages < 5:
        raise InputError(args.averages, "averages/intensity", f"only {avg.n_averages} averages; need >= 5")
    fparams, qrange = feature_params_from(p, avg, args.averages)
    fparams.validate(avg.size)
    y = _targets(args.embedding, avg.average_id, names)
    x = rotation_invariant_features(avg.intensity, avg.valid, fparams)
    log.info("%d averages -> %d features (radii %d..%d = q %.3f..%.3f rad/nm)", len(x), x.shape[1],
             fparams.r_min, fparams.r_max, fparams.r_min * avg.dq_nm, fparams.r_max * avg.dq_nm)

    from spicompute.landscape.regressor import split_by_runs

    try:
        split = split_by_runs(avg.run, config.seed)
        split_kind = "bootstrap runs (train / 1 validation run / 1 test run)"
    except ValueError as exc:
        log.warning("%s: random %.0f %% validation split, no test split (validation R^2 is optimistic)",
                    exc, 100 * config.val_fraction)
        split, split_kind = None, "random (fewer than 3 bootstrap runs)"

    from dvclive import Live

    with Live(args.live, save_dvc_exp=False, dvcyaml=None) as live:
        def on_epoch(row):
            live.log_metric("train_loss", row["train_loss"])
            live.log_metric("val_loss", row["val_loss"])
            live.next_step()

        reg, tr, va = train_regressor(x, y, config, fparams, names, on_epoch=on_epoch,
                                      split=None if split is None else split[:2])
    te = np.empty(0, int) if split is None else split[2]
    pred = reg.predict_features(x)
    metrics = {"validation": regression_metrics(pred[va], y[va], names),
               "train": regression_metrics(pred[tr], y[tr], names),
               "test": regression_metrics(pred[te], y[te], names) if te.size else None,
               "split": split_kind,
               "n_train": int(len(tr)), "n_val": int(len(va)), "n_test": int(len(te)),
               "n_features": int(x.shape[1]),
               "epochs": len(reg.history), **qrange.to_dict(),
               "best_epoch": int(np.argmin([h["val_loss"] for h in reg.history]))}
    split_col = np.full(len(x), "train", dtype=object)
    split_col[va] = "val"
    split_col[te] = "test"
    table = pd.DataFrame({"average_id": avg.average_id})
    for i in range(len(names)):
        table[f"nn_{i + 1}"] = pred[:, i]
    table["split"] = pd.Categorical(split_col, categories=["train", "val", "test"])
    save_regressor(reg, args.model, extra={"train_params": p, "averages": str(args.averages),
                                           "dq_nm": avg.dq_nm, "grid_size": avg.size,
                                           "embedding": str(args.embedding),
                                           "history": reg.history})
    write_table(args.out, table, stage=COMMAND)
    write_json_atomic(args.metrics, metrics)
    r2 = (metrics["test"] or metrics["validation"])["r2"]
    log.info("test R2 %s, %d epochs in %.1f s -> %s", {k: round(v, 3) for k, v in r2.items()},
             len(reg.history), time.perf_counter() - start, Path(args.model))
    return 0
