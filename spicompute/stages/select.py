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
HELP = "choose the averages that train the VAE (rules in params.yaml or a selection file)"
MODES = ("family", "all", "clusters", "box", "gain", "file")
DEFAULTS = {"mode": "family", "min_frames": "auto", "min_selected": "auto", "family_k": "auto",
            "family_shared_fraction": 0.5, "family_seed_fraction": 0.05, "family_min_fraction": 0.2,
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
        p["box"] = {str(col): _bounds(f"select.box.{col}", v) for col, v in box.items()}
    if p["mode"] == "gain" and not (isinstance(p["gain"], list) and len(p["gain"]) == 2):
        raise ParameterError("select.gain", "must be [lo, hi] (null for an open end)")
    if p["mode"] == "gain":
        p["gain"] = _bounds("select.gain", p["gain"])
    if p["mode"] == "file" and not p["file"]:
        raise ParameterError("select.file", "mode file needs a selection file, e.g. selections/<name>.json")
    if p["mode"] == "file":
        from spicompute.landscape.selections import confined_file

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


def family_mask(table: pd.DataFrame, keep: np.ndarray, p: dict):
    """The :class:`spicompute.landscape.family.Family` of the averages in ``keep`` (N,) bool.

    Uses the CLPCA columns ``select.family_components`` and the
    orientation-fit ``gain``; averages the embed stage left out of the
    landscape (``landscape_usable`` false) or with non-finite values are
    never in the family.
    """
    from spicompute.landscape.family import clpca_similarity, find_family

    cols = list(p["family_components"])
    needed = [(c, "results/parts/embed.parquet") for c in cols] + [("gain", "results/parts/orient.parquet")]
    for col, source in needed:
        if col not in table.columns:
            raise InputError(source, col, "column missing (select.mode family)")
    coords = table[cols].to_numpy(np.float64)
    gain = table["gain"].to_numpy(np.float64)
    usable = keep & np.isfinite(coords).all(1) & np.isfinite(gain)
    if "landscape_usable" in table.columns:
        usable &= table["landscape_usable"].to_numpy(bool)
    if usable.sum() < 2:
        raise ParameterError("select.mode", f"family needs >= 2 averages with CLPCA coordinates and a gain, "
                             f"got {int(usable.sum())}")
    k = None if p["family_k"] == "auto" else p["family_k"]
    return find_family(clpca_similarity(np.where(usable[:, None], coords, 0.0)), gain, usable, k=k,
                       shared_fraction=p["family_shared_fraction"], seed_fraction=p["family_seed_fraction"])


def select_averages(table: pd.DataFrame, p: dict, family_out: dict | None = None
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """(selected (N,) bool, reason (N,) str, min_frames used) for a per-average table.

    In mode family, ``family_out`` (a dict, when given) receives the
    :class:`spicompute.landscape.family.Family` under ``"family"``.
    """
    from spicompute.landscape.selections import apply_rule, members, read_selection

    n_frames = table["n_frames"].to_numpy(float)
    min_frames = 0.2 * float(np.median(n_frames)) if p["min_frames"] == "auto" else float(p["min_frames"])
    reason = np.full(len(table), "selected", dtype=object)
    keep = n_frames >= min_frames
    reason[~keep] = f"n_frames < {min_frames:.3g}"
    mode = p["mode"]
    if mode == "family":
        fam = family_mask(table, keep, p)
        if family_out is not None:
            family_out["family"] = fam
        inside = fam.keep
        why = "not in the cube-end family"
        usable = int((fam.component >= 0).sum())
        if fam.keep.sum() < p["family_min_fraction"] * usable:
            # no chain from the cube end through the landscape (too noisy a landscape, e.g. a
            # short EMC run): the family would be a fragment; train on all usable averages
            log.warning("select: the cube-end family holds %d of %d usable averages (< family_min_fraction "
                        "%.2g): the landscape shows no chain; keeping all usable averages instead",
                        int(fam.keep.sum()), usable, p["family_min_fraction"])
            inside = np.ones(len(table), bool)
            why = ""
            if family_out is not None:
                family_out["fallback"] = True
    elif mode == "clusters":
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


def truth_scores(average_id: np.ndarray, selected: np.ndarray, usable: np.ndarray, frames: pd.DataFrame,
                 truth: dict, source: str = "truth") -> dict:
    """Family purity and recall of a selection against simulation truth.

    An average is labelled by the majority true class of its member frames
    (``frames``: frame_id, average_id); it is *family* when that class is
    cube, melt or sphere.  purity = family share of the selected averages;
    recall = selected share of the family averages that are ``usable`` (N,)
    bool (enough member frames: the ones a selection may keep at all).
    """
    from spicompute.validation import average_truth

    members = frames.loc[frames["average_id"] >= 0, ["frame_id", "average_id"]]
    unknown = np.setdiff1d(members["frame_id"].to_numpy(), np.asarray(truth["frame_id"]))
    if unknown.size:
        raise InputError(source, "truth/frame_id", "some member frames have no truth row")
    per_average = average_truth(members, truth).set_index("average_id").reindex(average_id)
    majority = per_average["majority_class"]
    family = per_average["family"].fillna(False).to_numpy(bool)
    n_sel = int(selected.sum())
    n_fam = int((family & usable).sum())
    return {"family_purity": float(family[selected].mean()) if n_sel else None,
            "family_recall": float(selected[family & usable].mean()) if n_fam else None,
            "family_label": "majority true class of the member frames; family = cube, melt or sphere",
            "n_family_usable": n_fam,
            "n_selected_family": int((family & selected).sum()),
            "selected_classes": {str(c): int(n) for c, n in
                                 majority[selected].value_counts().sort_index().items()}}


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
        metrics.update(family_k=fam.k, family_min_shared=fam.min_shared, n_family=int(fam.keep.sum()),
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
