"""select: which averages train the VAE.

Always drops averages with too few member frames (``select.min_frames``;
``auto`` = a fifth of the median occupancy: such averages are mostly shot
noise).  Then ``select.mode``:

- ``family``     (default) keep the particle family connected to the cube end,
                 found without truth (:mod:`spicompute.landscape.family`: shared-nearest-
                 neighbour graph in CLPCA space, seeded by the highest
                 orientation-fit gain); contaminant groups (rods, aggregates)
                 are dropped, the sphere end is kept through the chain;
- ``all``        nothing more;
- ``clusters``   keep ``select.clusters`` (cluster ids of the embed stage);
- ``box``        keep a box in any columns, ``select.box: {pc_1: [lo, hi], ...}``;
- ``gain``       keep ``select.gain: [lo, hi]`` (orientation-fit gain; null = open);
- ``file``       keep the averages of ``select.file`` (a selection under
                 ``selections/``, e.g. drawn in the dashboard).

A selection that keeps fewer than ``select.min_selected`` averages (auto:
``vae.batch_size``, one training batch) is an error naming the parameter
that caused it; nothing is written.

Reads the part tables of classify2d, embed and orient (not
results/averages.parquet, which the ``tables`` stage builds after this one),
writes ``results/parts/select.parquet``: ``average_id, selected, reason``
(plus ``family``, ``family_seed`` in mode family).  With simulation truth
(``--truth``, ``--frames-table``) the metrics also hold the family purity
and recall of the selection (:func:`truth_scores`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import get_logger, stage_params

COMMAND = "select"
OUTPUTS = ("out", "metrics")   # --truth and --frames-table are inputs here
HELP = "choose the averages that train the VAE (rules in params.yaml or a selection file)"
MODES = ("family", "all", "clusters", "box", "gain", "file")
DEFAULTS = {"mode": "family", "min_frames": "auto", "min_selected": "auto", "family_k": "auto",
            "family_shared_fraction": 0.5, "family_seed_fraction": 0.05, "family_min_fraction": 0.2,
            "family_density_mads": 2.0, "family_support_fraction": 0.0, "family_anisotropy_ratio": 10.0,
            "family_components": ["pc_1", "pc_2", "pc_3"], "clusters": [], "box": {}, "gain": [None, None],
            "file": ""}

log = get_logger("select")


def add_arguments(parser):
    parser.add_argument("--parts", nargs="+", default=["results/parts/classify2d.parquet",
                                                       "results/parts/embed.parquet",
                                                       "results/parts/orient.parquet"],
                        help="part tables to join on average_id (the first has one row per average)")
    parser.add_argument("--out", default="results/parts/select.parquet")
    parser.add_argument("--metrics", default="metrics/select.json")
    parser.add_argument("--truth", default="", help="simulation truth (data/truth.h5): record the family "
                        "purity and recall of the selection ('' or a file without truth: skip)")
    parser.add_argument("--frames-table", default="results/frames.parquet",
                        help="member frames of each average (classify2d), used with --truth")


def options(raw: dict) -> dict:
    from spicompute.landscape.training_set import bounds
    from spicompute.params import choice, integer, positive, with_defaults

    p = with_defaults("select", raw, DEFAULTS)
    p["mode"] = choice("select.mode", p["mode"], MODES)
    if p["min_frames"] != "auto":
        p["min_frames"] = positive("select.min_frames", p["min_frames"], allow_zero=True)
    if p["min_selected"] != "auto":
        p["min_selected"] = positive("select.min_selected", p["min_selected"], integer=True)
    if p["family_k"] != "auto":
        p["family_k"] = positive("select.family_k", p["family_k"], integer=True)
    for name in ("family_shared_fraction", "family_seed_fraction", "family_min_fraction"):
        value = positive(f"select.{name}", p[name])
        if value > 1:
            raise ParameterError(f"select.{name}", f"must be in (0, 1], got {value}")
        p[name] = value
    support = positive("select.family_support_fraction", p["family_support_fraction"], allow_zero=True)
    if support > 1:
        raise ParameterError("select.family_support_fraction", f"must be in [0, 1], got {support}")
    p["family_support_fraction"] = support
    if p["family_anisotropy_ratio"] is not None:
        ratio = positive("select.family_anisotropy_ratio", p["family_anisotropy_ratio"])
        if ratio <= 1:
            raise ParameterError("select.family_anisotropy_ratio",
                                 f"must be > 1 (x the cube end's median) or null, got {ratio}")
        p["family_anisotropy_ratio"] = ratio
    if p["family_density_mads"] is not None:
        p["family_density_mads"] = positive("select.family_density_mads", p["family_density_mads"])
    comps = p["family_components"]
    if not (isinstance(comps, list) and comps and all(isinstance(c, str) for c in comps)):
        raise ParameterError("select.family_components",
                             "must be a non-empty list of column names, e.g. [pc_1, pc_2, pc_3]")
    if p["mode"] == "clusters" and not (isinstance(p["clusters"], list) and p["clusters"]):
        raise ParameterError("select.clusters", "mode clusters needs a non-empty list of cluster ids")
    if p["mode"] == "clusters":
        p["clusters"] = [integer("select.clusters", c) for c in p["clusters"]]
    if p["mode"] == "box":
        box = p["box"]
        if not isinstance(box, dict) or not box or not all(isinstance(v, list) and len(v) == 2 for v in box.values()):
            raise ParameterError("select.box", "mode box needs {column: [lo, hi], ...}")
        p["box"] = {str(col): bounds(f"select.box.{col}", v) for col, v in box.items()}
    if p["mode"] == "gain" and not (isinstance(p["gain"], list) and len(p["gain"]) == 2):
        raise ParameterError("select.gain", "must be [lo, hi] (null for an open end)")
    if p["mode"] == "gain":
        p["gain"] = bounds("select.gain", p["gain"])
    if p["mode"] == "file" and not p["file"]:
        raise ParameterError("select.file", "mode file needs a selection file, e.g. selections/<name>.json")
    if p["mode"] == "file":
        from spicompute.landscape.selections import confined_file

        p["file"] = str(confined_file(p["file"], "select.file"))
    return p


def _min_selected(args, p: dict) -> int:
    if p["min_selected"] != "auto":
        return int(p["min_selected"])
    from spicompute.stages._common import all_params

    batch = (all_params(args).get("vae") or {}).get("batch_size", 2)
    try:  # one training batch, but no more than 8: a small data set still trains (in smaller batches)
        return max(2, min(8, int(batch)))
    except (TypeError, ValueError):
        return 2


def _nothing_selected(p: dict, reason: np.ndarray, n: int, min_frames: float) -> Exception:
    """The error for an empty selection, naming what to change (the file or the parameter)."""
    mode = p["mode"]
    if (reason != "selected").all() and all(str(r).startswith("n_frames <") for r in reason):
        return ParameterError("select.min_frames", f"no average of {n} has >= {min_frames:.3g} member frames")
    if mode == "file":
        return InputError(p["file"], "average_ids", f"keeps no average: none of its averages is among the "
                                                    f"{n} averages of this run (with enough frames)")
    return ParameterError(f"select.{mode}", f"the selection keeps no average of {n}")


def run(args) -> int:
    from spicompute.io.provenance import write_json_atomic
    from spicompute.io.tables import merge_parts, read_table, write_table
    from spicompute.landscape.training_set import select_averages, truth_scores

    p = options(stage_params(args, "select"))
    min_selected = _min_selected(args, p)
    tables = [read_table(path) for path in args.parts]
    try:
        table = merge_parts(tables[0], tables[1:])
    except ValueError as exc:
        raise InputError(", ".join(args.parts), None, str(exc)) from exc
    if "n_frames" not in table.columns:
        raise InputError(args.parts[0], "n_frames", "column missing")
    extra: dict = {}
    selected, reason, min_frames = select_averages(table, p, extra)
    if not selected.any():
        raise _nothing_selected(p, reason, len(table), min_frames)
    if selected.sum() < min_selected:
        culprit = {"family": "select.family_*", "clusters": "select.clusters", "box": "select.box",
                   "gain": "select.gain", "file": "select.file"}.get(p["mode"], "select.min_frames")
        raise ParameterError(f"select.mode {p['mode']} ({culprit})",
                             f"keeps {int(selected.sum())} of {len(table)} averages; the VAE needs >= "
                             f"{min_selected} (select.min_selected)")
    metrics = {"mode": p["mode"], "min_frames": min_frames, "min_selected": min_selected,
               "n_averages": int(len(table)), "n_selected": int(selected.sum())}
    columns = {"average_id": table["average_id"].to_numpy(), "selected": selected,
               "reason": pd.Series(reason, dtype="string")}
    fam = extra.get("family")
    if fam is not None:
        columns["family"] = fam.keep
        columns["family_seed"] = fam.seed
        metrics.update(family_k=fam.k, family_min_shared=fam.min_shared, family_min_support=fam.min_support,
                       n_family=int(fam.keep.sum()),
                       n_family_sparse=int(fam.sparse.sum()),
                       n_elongated=int(fam.anisotropic.sum()) if fam.anisotropic is not None else 0,
                       family_anisotropy_limit=fam.anisotropy_limit,
                       family_fallback=bool(extra.get("fallback", False)))
    if args.truth:
        from spicompute.io.truth import read_truth

        try:
            truth = read_truth(args.truth)
        except InputError as exc:  # ingested data: the frames stage writes no truth
            log.info("no family purity/recall: %s", exc)
            truth = None
        if truth is not None:
            frames = read_table(args.frames_table)
            for col in ("frame_id", "average_id"):
                if col not in frames.columns:
                    raise InputError(args.frames_table, col, "column missing")
            usable = table["n_frames"].to_numpy(float) >= min_frames
            metrics.update(truth_scores(table["average_id"].to_numpy(), selected, usable, frames, truth,
                                        source=args.truth))
    out = pd.DataFrame(columns)
    metrics["reasons"] = pd.Series(reason).value_counts().to_dict()
    write_table(args.out, out, stage=COMMAND, params=p)
    write_json_atomic(args.metrics, metrics)
    log.info("%d of %d averages selected (%s)%s", selected.sum(), len(out), metrics["reasons"],
             "" if metrics.get("family_purity") is None else
             f"; family purity {metrics['family_purity']:.3f}, recall {metrics['family_recall']:.3f}")
    return 0
