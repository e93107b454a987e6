"""How well 2D classes sort frames."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger("spicompute.classify2d")


def class_sorting_f(values: np.ndarray, labels: np.ndarray) -> float | None:
    """One-way ANOVA F of ``log(values)`` between the frames' classes.

    values : (n,) a positive per-frame quantity (photons, fluence, size);
    labels : (n,) the frame's class.  About 1 when the classes ignore the
    quantity (F(k-1, n-k) has mean ~1), well above 1 when EMC grouped frames
    by it.  None with fewer than two classes holding two frames.
    """
    x = np.log(np.maximum(np.asarray(values, np.float64), 1e-12))
    labels = np.asarray(labels)
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    ok = counts[inv] >= 2
    x, inv = x[ok], np.unique(inv[ok], return_inverse=True)[1]
    counts = np.bincount(inv)
    k, n = counts.size, x.size
    if k < 2 or n <= k:
        return None
    means = np.bincount(inv, weights=x) / counts
    between = float((counts * (means - x.mean()) ** 2).sum()) / (k - 1)
    within = float(((x - means[inv]) ** 2).sum()) / (n - k)
    return between / within if within > 0 else None


def photon_sorting(photons: np.ndarray, labels: np.ndarray) -> float | None:
    """:func:`class_sorting_f` of the frames' photon counts (floored at 1).

    Photons per frame are fluence x the particle's scattering power in that
    view (size, shape, orientation), so a high F is expected from classes that
    separate views and sizes -- as they should.  With simulation truth,
    :func:`truth_sorting` separates the two: measured on the 65^2 low-photon
    set, F(photons) 44-49 came with F(true fluence) 1.7 (chance) and
    F(photons / fluence) 216.  (Not the fitted fluence scales: a class's scales
    and its model trade a common factor freely.)
    """
    return class_sorting_f(np.maximum(np.asarray(photons, np.float64), 1.0), labels)


def truth_sorting(truth: dict, frame_id: np.ndarray, labels: np.ndarray) -> dict:
    """F of :func:`class_sorting_f` for the simulation's nuisance and structure per frame.

    ``fluence`` (a nuisance: ~1 wanted), ``scattering_strength`` (expected
    particle photons / fluence: view, shape, size -- structure), ``size_nm``.
    frame_id, labels : (n,) the run's frames and their classes.
    """
    by_id = pd.Series(np.arange(len(truth["frame_id"])), index=truth["frame_id"])
    rows = by_id.reindex(frame_id).to_numpy()
    fluence = np.asarray(truth["fluence"], np.float64)[rows]
    strength = np.asarray(truth["photons_expected"], np.float64)[rows] / np.maximum(fluence, 1e-12)
    return {"fluence": class_sorting_f(fluence, labels),
            "scattering_strength": class_sorting_f(strength, labels),
            "size_nm": class_sorting_f(np.asarray(truth["size_nm"], np.float64)[rows], labels)}


def purity_against_baseline(truth: dict, frames, result, n_models: int, seed: int) -> dict:
    """Shape purity of each run's EMC classes and of the naive baseline on the same frames."""
    from spicompute.emc2d.baseline import naive_classes, shape_labels, shape_purity

    by_id = pd.Series(np.arange(len(truth["frame_id"])), index=truth["frame_id"])
    labels_all = shape_labels(truth["class_name"], truth["melt_t"])
    per_run, base = [], []
    for run_i, fr in enumerate(result.frames):
        ids = frames.frame_id[fr["index"]]
        labels = labels_all[by_id.reindex(ids).to_numpy()]
        per_run.append(shape_purity(fr["model"], labels))
        if run_i == 0:  # the baseline on run 0's frames (the runs share ~80 % of them)
            naive = naive_classes(frames.counts[fr["index"]], frames.detector, n_models, seed=seed)
            base.append(shape_purity(naive, labels))
    out = {"labels": "cube-like (t <= 0.2) | intermediate | sphere-like (t >= 0.8) | contaminant",
           "emc_per_run": [round(v, 4) for v in per_run], "emc_mean": round(float(np.mean(per_run)), 4),
           "naive_baseline": round(base[0], 4), "n_classes": n_models}
    out["emc_minus_baseline"] = round(out["emc_mean"] - out["naive_baseline"], 4)
    log.info("shape purity: EMC %.3f (mean of %d runs) vs naive radial-profile clustering %.3f",
             out["emc_mean"], len(per_run), out["naive_baseline"])
    return out


def mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
