"""Which averages train the VAE."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError

log = logging.getLogger("spicompute.select")


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
    anisotropy = None
    if p.get("family_anisotropy_ratio", 10.0) is not None:
        if "low_q_anisotropy" in table.columns:
            anisotropy = table["low_q_anisotropy"].to_numpy(np.float64)
        else:
            log.warning("select: results/parts/orient.parquet has no low_q_anisotropy column (an orient "
                        "stage older than 2026-12-06): dimers are not tested for (select.family_anisotropy_ratio)")
    return find_family(clpca_similarity(np.where(usable[:, None], coords, 0.0)), gain, usable, k=k,
                       shared_fraction=p["family_shared_fraction"], seed_fraction=p["family_seed_fraction"],
                       density_mads=p.get("family_density_mads", 2.0),
                       support_fraction=p.get("family_support_fraction", 0.0),
                       anisotropy=anisotropy, anisotropy_ratio=p.get("family_anisotropy_ratio", 10.0))


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
    if mode == "family" and why:
        reason[keep & fam.sparse] = "sparse in CLPCA space (select.family_density_mads)"
        if fam.anisotropic is not None:
            reason[keep & fam.anisotropic] = "elongated at low q (select.family_anisotropy_ratio)"
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


def bounds(name: str, value: list) -> list:
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
