"""Oracle class averages from the simulator's truth: what the landscape could get at best.

A landscape cell that misses (best CLPCA |rho| with melt < 0.8) has two possible
limits: the classification (classes that mix shapes, melt levels and views) or
the photons (each average carries only so many counts, and the common-line CC
of two noisy averages cannot resolve a melt difference smaller than its noise).
The oracle separates the two.  It keeps every average of a finished run -- its
id, run, coverage and member frames -- and replaces its intensity with an ideal
one made from the members' truth:

* **one sharp view** of the members' majority shape (the family at the members'
  mean melt t; a dimer, rod or aggregate otherwise -- the first of the simulator's
  aggregate shapes, since the truth does not record which), at the orientation of
  one member of that shape and the members' mean size -- a perfect classification
  of shape and view;
* **the members' own counts** (``counts=True``): the members' summed expected
  particle photons spread over the observed grid points in proportion to that
  view, plus their summed background photons over the simulator's background
  profile, drawn as Poisson counts, the expected background subtracted;
  ``counts=False`` gives the noise-free view (the method's ceiling).

Each oracle average is scaled to its real average's total over the observed
points, so the stages downstream (the counts-limited q range of ``ccmatrix``
in particular) see the same intensity level.  The common-line landscape of the
oracle averages at the members' counts is the bound: no classification into
these many classes of these frames can give the landscape sharper averages than
one perfect view each, nor more photons than its members had.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from spicompute.io.averages import AverageSet
from spicompute.validation import FAMILY_CLASSES

RENDER_CHUNK = 32   # views rendered per torch call (chunk x L^2 x 3 float32 model-frame points)


def average_representatives(frames: pd.DataFrame, truth: dict) -> pd.DataFrame:
    """Per average: the ideal view its members stand for, and their photons.

    frames : rows (frame_id, average_id) of ``results/frames.parquet`` (average_id < 0 ignored)
    truth : :func:`spicompute.io.truth.read_truth` (per frame: class_name, melt_t,
        quaternion (N, 4), size_scale, photons_expected, background_photons)
    Returns one row per average_id: ``kind`` (the members' majority class: cube, melt
    and sphere are one family ``melt``), ``melt_t`` (mean over family members; cube 0,
    sphere 1), ``quaternion`` (of the first member of the majority kind), ``size_scale``
    (mean over that kind's members), ``photons`` and ``background`` (summed over all
    members: expected particle photons, sampled background photons), ``members``.
    """
    names = np.asarray(truth["class_name"]).astype(str)
    kind = np.where(np.isin(names, FAMILY_CLASSES), "melt", names)
    t = np.asarray(truth["melt_t"], np.float64).copy()
    t[names == "cube"] = 0.0
    t[names == "sphere"] = 1.0
    n = len(names)
    bg = np.asarray(truth.get("background_photons", np.zeros(n)), np.float64)
    per_frame = pd.DataFrame({"frame_id": np.asarray(truth["frame_id"]), "kind": kind, "melt_t": t,
                              "size_scale": np.asarray(truth["size_scale"], np.float64),
                              "photons": np.asarray(truth["photons_expected"], np.float64),
                              "background": bg, "row": np.arange(n)})
    members = frames.loc[frames["average_id"] >= 0, ["frame_id", "average_id"]].merge(per_frame, on="frame_id")
    if members.empty:
        raise ValueError("no frame is a member of an average")
    totals = members.groupby("average_id").agg(members=("frame_id", "size"), photons=("photons", "sum"),
                                               background=("background", "sum"))
    majority = members.groupby("average_id")["kind"].agg(lambda k: k.value_counts().idxmax())
    of_kind = members[members["kind"].to_numpy() == majority.reindex(members["average_id"]).to_numpy()]
    view = of_kind.groupby("average_id").agg(melt_t=("melt_t", "mean"), size_scale=("size_scale", "mean"),
                                             row=("row", "first"))
    out = totals.join(majority.rename("kind")).join(view)
    quats = np.asarray(truth["quaternion"], np.float64)
    out["quaternion"] = list(quats[out["row"].to_numpy()])
    return out.drop(columns="row").reset_index()


def oracle_averages(averages: AverageSet, reps: pd.DataFrame, library, *, counts: bool = True,
                    background_flat_fraction: float = 1.0, background_q_nm: float = 1.0,
                    rng: np.random.Generator | None = None) -> AverageSet:
    """The averages with each intensity replaced by its members' ideal view (module docstring).

    averages : the real averages (M, L, L); their ids, runs, weights and n_frames are kept
    reps : :func:`average_representatives`, one row per average_id of ``averages``
    library : the simulator's :class:`~spicompute.simulation.simulate.ShapeLibrary`
    counts : draw the members' photons (True) or give the noise-free view (False)
    background_flat_fraction, background_q_nm : the simulator's background profile
        (flat share; decay length of the rest in rad/nm)
    Averages without a representative (no member frames) keep their real intensity.
    """
    import torch

    from spicompute.simulation.simulate import background_shares, model_q

    rng = rng or np.random.default_rng(0)
    q = averages.q_grid(ewald=True).reshape(-1, 3).astype(np.float32)
    q_norm = np.linalg.norm(q, axis=1)
    qt = torch.from_numpy(np.ascontiguousarray(q))
    observed = averages.weight.reshape(averages.n_averages, -1) > 0
    by_id = reps.set_index("average_id")
    rows = np.array([m for m, aid in enumerate(averages.average_id)
                     if aid in by_id.index and observed[m].any()], dtype=np.int64)
    rep = by_id.loc[averages.average_id[rows]]
    scale = rep["size_scale"].to_numpy(np.float64)
    views = np.zeros((len(rows), q.shape[0]), np.float64)
    kinds = rep["kind"].astype(str).to_numpy()
    with torch.no_grad():
        for kind in np.unique(kinds):   # one batched slice per kind and chunk, not per average
            sel = np.flatnonzero(kinds == kind)
            for c in range(0, len(sel), RENDER_CHUNK):
                idx = sel[c:c + RENDER_CHUNK]
                qm = model_q(qt, np.stack(rep["quaternion"].to_numpy()[idx]), scale[idx])
                views[idx] = library.intensity(kind, qm, t=rep["melt_t"].to_numpy()[idx],
                                               variant=np.zeros(len(idx), dtype=np.int64)).numpy()
    views *= scale[:, None] ** 6 * observed[rows]
    out = averages.intensity.copy()
    for i, m in enumerate(rows):   # in average order: the Poisson draws are the same for a seed
        view, seen = views[i], observed[m]
        if view.sum() <= 0:
            continue
        if counts:
            lam = view * (float(rep["photons"].iloc[i]) / view.sum())
            lam_bg = float(rep["background"].iloc[i]) * background_shares(
                seen.astype(np.float64), q_norm, background_flat_fraction, background_q_nm)
            ideal = rng.poisson(lam + lam_bg) - lam_bg
        else:
            ideal = view
        real_total = float(averages.intensity[m].ravel()[seen].sum())
        ideal_total = float(ideal[seen].sum())
        factor = real_total / ideal_total if ideal_total > 0 and real_total > 0 else 1.0
        out[m] = (ideal * factor * seen).reshape(out[m].shape).astype(np.float32)
    return AverageSet(out, averages.weight, averages.average_id, averages.run, averages.model,
                      averages.n_frames, averages.dq_nm, averages.wavelength_nm, averages.source)


# ----------------------------------------------------------------------------- members' truth
MEMBER_T_STEP = 0.01       # members' melt levels grouped to this step
MEMBER_SIZE_STEP = 0.002   # ... and their sizes (a fringe at q R = 10 moves 0.02 rad within a step)
MEMBER_BATCH = 32          # (melt, size) groups evaluated per library call


def library_from_truth(path, q_extent_nm: float):
    """The simulator's :class:`~spicompute.simulation.simulate.ShapeLibrary` rebuilt from the
    ``simulate`` parameters the truth file was written with (its ``spicompute_params``), covering
    |q| <= ``q_extent_nm``; None when the file does not record them."""
    from spicompute.io.frames import open_h5
    from spicompute.io.provenance import stamped_params
    from spicompute.simulation.simulate import ShapeLibrary, SimulationParams

    with open_h5(path) as h5:
        section = (stamped_params(h5) or {}).get("simulate")
    return None if section is None else ShapeLibrary(SimulationParams.from_dict(section), q_extent_nm)


def members_intensity(library, melt_t: np.ndarray, size_scale: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The mean over member frames of the family intensity each of them scattered, at points q.

    melt_t, size_scale : (n,) each member's true melt level (cube 0, sphere 1) and relative size
    q : (P, 3) rad/nm, points in the particle's own frame (where the truth and the generated
        volumes live; the members' orientations do not enter)
    Returns (P,) float64 nm^6: mean of ``s^6 I_t(s q)`` -- the exact mixture a class average of
    these members samples, with the members' melt grouped to ``MEMBER_T_STEP`` and sizes to
    ``MEMBER_SIZE_STEP``.
    """
    import torch

    t = np.round(np.clip(np.asarray(melt_t, np.float64), 0.0, 1.0) / MEMBER_T_STEP) * MEMBER_T_STEP
    s = np.round(np.asarray(size_scale, np.float64) / MEMBER_SIZE_STEP) * MEMBER_SIZE_STEP
    if t.size == 0:
        raise ValueError("no member frames")
    pairs, counts = np.unique(np.stack([t, s], 1), axis=0, return_counts=True)
    points = torch.from_numpy(np.ascontiguousarray(q, np.float32))
    weights = counts * pairs[:, 1] ** 6
    out = np.zeros(len(points))
    with torch.no_grad():
        for a in range(0, len(pairs), MEMBER_BATCH):   # one batched call per chunk of groups
            chunk = pairs[a:a + MEMBER_BATCH]
            qs = points[None] * torch.from_numpy(chunk[:, 1].astype(np.float32))[:, None, None]
            values = library.intensity("melt", qs, t=chunk[:, 0]).numpy().astype(np.float64)
            out += weights[a:a + MEMBER_BATCH] @ values
    return out / counts.sum()
