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
    from spicompute.params import choice, integer, positive, with_defaults

    p = with_defaults("select", raw, DEFAULTS)
    p["mode"] = choice("select.mode", p["mode"], MODES)
    if p["min_frames"] != "auto":
        p["min_frames"] = positive("select.min_frames", p["min_frames"], allow_zero=True)
    if p["mode"] == "clusters" and not (isinstance(p["clusters"], list) and p["clusters"]):
        raise ParameterError("select.clusters", "mode clusters needs a non-empty list of cluster ids")
    if p["mode"] == "clusters":
        p["clusters"] = [integer("select.clusters", c) for c in p["clusters"]]
    if p["mode"] == "box":
        box = p["box"]
        if not isinstance(box, dict) or not box or not all(isinstance(v, list) and len(v) == 2 for v in box.values()):
            raise ParameterError("select.box", "mode box needs {column: [lo, hi], ...}")
        p["box"] = {str(col): _bounds(f"select.box.{col}", v) for col, v in box.items()}
    if p["mode"] == "gain" and not (isinstance(p["gain"], list) and len(p["gain"]) == 2):
        raise ParameterError("select.gain", "must be [lo, hi] (null for an open end)")
    if p["mode"] == "gain":
        p["gain"] = _bounds("select.gain", p["gain"])
    if p["mode"] == "file" and not p["file"]:
        raise ParameterError("select.file", "mode file needs a selection file, e.g. selections/<name>.json")
    if p["mode"] == "file":
        from spicompute.selections import confined_file

        p["file"] = str(confined_file(p["file"], "select.file"))
    return p


def _bounds(name: str, value: list) -> list:
    """[lo, hi] with numbers or null (open end), lo < hi when both are given."""
    out = []
    for v in value:
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ParameterError(name, f"must be [lo, hi] with numbers or null (open end), got {value!r}")
        out.append(float(v))
    if None not in out and out[0] > out[1]:
        raise ParameterError(name, f"lo must not exceed hi, got {value!r}")
    return out


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
        raise _nothing_selected(p, reason, len(table), min_frames)
    out = pd.DataFrame({"average_id": table["average_id"].to_numpy(), "selected": selected,
                        "reason": pd.Series(reason, dtype="string")})
    write_table(args.out, out, stage=COMMAND, params=p)
    counts = pd.Series(reason).value_counts().to_dict()
    write_json_atomic(args.metrics, {"mode": p["mode"], "min_frames": min_frames, "n_averages": int(len(out)),
                                     "n_selected": int(selected.sum()), "reasons": counts})
    log.info("%d of %d averages selected (%s)", selected.sum(), len(out), counts)
    return 0
