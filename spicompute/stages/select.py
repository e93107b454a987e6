"""select: which averages train the VAE.

Always drops averages with too few member frames (``select.min_frames``;
``auto`` = a fifth of the median occupancy: such averages are mostly shot
noise).  Then ``select.mode``:

- ``all``        nothing more;
- ``clusters``   keep ``select.clusters`` (cluster ids of the embed stage);
- ``box``        keep a box in any columns, ``select.box: {pc_1: [lo, hi], ...}``;
- ``gain``       keep ``select.gain: [lo, hi]`` (orientation-fit gain; null = open);
- ``file``       keep the averages of ``select.file`` (a selection under
                 ``selections/``, e.g. drawn in the dashboard).

Reads the part tables of classify2d, embed and orient (not
results/averages.parquet, which the ``tables`` stage builds after this one),
writes ``results/parts/select.parquet``: ``average_id, selected, reason``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import get_logger, stage_params

COMMAND = "select"
HELP = "choose the averages that train the VAE (rules in params.yaml or a selection file)"
MODES = ("all", "clusters", "box", "gain", "file")
DEFAULTS = {"mode": "all", "min_frames": "auto", "clusters": [], "box": {}, "gain": [None, None], "file": ""}

log = get_logger("select")


def add_arguments(parser):
    parser.add_argument("--parts", nargs="+", default=["results/parts/classify2d.parquet",
                                                       "results/parts/embed.parquet",
                                                       "results/parts/orient.parquet"],
                        help="part tables to join on average_id (the first has one row per average)")
    parser.add_argument("--out", default="results/parts/select.parquet")
    parser.add_argument("--metrics", default="metrics/select.json")


def options(raw: dict) -> dict:
    from spicompute.params import choice, positive, with_defaults

    p = with_defaults("select", raw, DEFAULTS)
    p["mode"] = choice("select.mode", p["mode"], MODES)
    if p["min_frames"] != "auto":
        p["min_frames"] = positive("select.min_frames", p["min_frames"], allow_zero=True)
    if p["mode"] == "clusters" and not (isinstance(p["clusters"], list) and p["clusters"]):
        raise ParameterError("select.clusters", "mode clusters needs a non-empty list of cluster ids")
    if p["mode"] == "box":
        box = p["box"]
        if not isinstance(box, dict) or not box or not all(isinstance(v, list) and len(v) == 2 for v in box.values()):
            raise ParameterError("select.box", "mode box needs {column: [lo, hi], ...}")
    if p["mode"] == "gain" and not (isinstance(p["gain"], list) and len(p["gain"]) == 2):
        raise ParameterError("select.gain", "must be [lo, hi] (null for an open end)")
    if p["mode"] == "file" and not p["file"]:
        raise ParameterError("select.file", "mode file needs a selection file, e.g. selections/<name>.json")
    return p


def _range_rule(bounds) -> dict:
    rule = {}
    if bounds[0] is not None:
        rule["min"] = float(bounds[0])
    if bounds[1] is not None:
        rule["max"] = float(bounds[1])
    return rule


def select_averages(table: pd.DataFrame, p: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """(selected (N,) bool, reason (N,) str, min_frames used) for a per-average table."""
    from spicompute.selections import apply_rule, members, read_selection

    n_frames = table["n_frames"].to_numpy(float)
    min_frames = 0.2 * float(np.median(n_frames)) if p["min_frames"] == "auto" else float(p["min_frames"])
    reason = np.full(len(table), "selected", dtype=object)
    keep = n_frames >= min_frames
    reason[~keep] = f"n_frames < {min_frames:.3g}"
    mode = p["mode"]
    if mode == "clusters":
        if "cluster" not in table.columns:
            raise InputError("results/parts/embed.parquet", "cluster", "column missing (mode clusters)")
        inside = np.isin(table["cluster"].to_numpy(), p["clusters"])
        why = f"cluster not in {p['clusters']}"
    elif mode == "box":
        inside = apply_rule(table, {c: _range_rule(v) for c, v in p["box"].items()}, "select.box")
        why = "outside box"
    elif mode == "gain":
        if "gain" not in table.columns:
            raise InputError("results/parts/orient.parquet", "gain", "column missing (mode gain)")
        inside = apply_rule(table, {"gain": _range_rule(p["gain"])}, "select.gain")
        why = "gain outside range"
    elif mode == "file":
        sel = read_selection(p["file"])
        if sel["kind"] != "averages":
            raise InputError(p["file"], "kind", "select needs an averages selection")
        inside = members(table, sel)
        why = f"not in selection {sel['name']}"
    else:
        inside = np.ones(len(table), bool)
        why = ""
    reason[keep & ~inside] = why
    return keep & inside, reason, min_frames


def run(args) -> int:
    from spicompute.io.provenance import write_json_atomic
    from spicompute.io.tables import merge_parts, read_table, write_table

    p = options(stage_params(args, "select"))
    tables = [read_table(path) for path in args.parts]
    try:
        table = merge_parts(tables[0], tables[1:])
    except ValueError as exc:
        raise InputError(", ".join(args.parts), None, str(exc)) from exc
    if "n_frames" not in table.columns:
        raise InputError(args.parts[0], "n_frames", "column missing")
    selected, reason, min_frames = select_averages(table, p)
    if not selected.any():
        raise InputError(args.parts[0], "average_id", f"the selection ({p['mode']}) keeps no average")
    out = pd.DataFrame({"average_id": table["average_id"].to_numpy(), "selected": selected,
                        "reason": pd.Series(reason, dtype="string")})
    write_table(args.out, out, stage=COMMAND, params=p)
    counts = pd.Series(reason).value_counts().to_dict()
    write_json_atomic(args.metrics, {"mode": p["mode"], "min_frames": min_frames, "n_averages": int(len(out)),
                                     "n_selected": int(selected.sum()), "reasons": counts})
    log.info("%d of %d averages selected (%s)", selected.sum(), len(out), counts)
    return 0
