"""A naive, rotation-invariant clustering of frames: the yardstick for 2D EMC classes.

Per frame (photon-sparse counts on the good pixels): the photons in each ring
of width ``ring_nm`` divided by the ring's good pixels and the frame's total
photons (a fluence-free radial profile), and each ring's angular contrast
(standard deviation / mean of the counts in 12 sectors: streaks of a cube vs
rings of a sphere).  ``log`` of both, standardised, PCA to ``n_components``,
k-means with the same K as EMC.  No rotations are searched: if 2D EMC does
not separate shapes better than this, its classes are not earning their cost.

Shape purity (:func:`shape_purity`): frame-weighted share of frames whose
class's majority label is their own, with labels from the simulation truth:
``cube-like`` (cube, or melt t <= 0.2), ``intermediate``, ``sphere-like``
(sphere, or melt t >= 0.8), ``contaminant`` (anything else).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from spicompute.geometry import Detector

N_SECTORS = 12
SHAPE_LABELS = ("cube-like", "intermediate", "sphere-like", "contaminant")


def ring_features(counts: sp.csr_matrix, detector: Detector, ring_nm: float | None = None,
                  q_max_nm: float | None = None) -> np.ndarray:
    """(N, 2 * n_rings) log radial profile and log angular contrast per ring.

    counts : CSR (N, P) photon counts on all detector pixels (masked ones are ignored).
    ring_nm : ring width, rad/nm (default: 2 pixel steps); q_max_nm: outer edge (default: all).
    """
    good = detector.mask.astype(bool)
    qn = np.linalg.norm(detector.q_perp, axis=1)
    ring_nm = ring_nm or 2 * detector.dq_nm
    q_max_nm = q_max_nm or float(qn[good].max())
    ring = np.floor(qn / ring_nm).astype(np.int64)
    n_rings = int(np.floor(q_max_nm / ring_nm))
    phi = np.arctan2(detector.q_perp[:, 1], detector.q_perp[:, 0])
    sector = np.floor((phi + np.pi) / (2 * np.pi) * N_SECTORS).astype(np.int64) % N_SECTORS
    use = good & (ring < n_rings)
    cell = np.where(use, ring * N_SECTORS + sector, -1)
    n_cells = n_rings * N_SECTORS
    pix_per_cell = np.bincount(cell[use], minlength=n_cells).astype(np.float64)
    # pixel -> cell aggregation as one sparse product: (N, P) @ (P, cells)
    cols = np.flatnonzero(use)
    agg = sp.csr_matrix((np.ones(cols.size), (cols, cell[cols])), shape=(counts.shape[1], n_cells))
    per_cell = np.asarray((counts @ agg).todense(), dtype=np.float64)              # (N, cells)
    density = per_cell / np.maximum(pix_per_cell, 1)[None]
    density = density.reshape(-1, n_rings, N_SECTORS)
    photons = np.maximum(np.asarray(counts.sum(axis=1)).reshape(-1), 1.0)
    profile = density.mean(axis=2) / photons[:, None]
    contrast = density.std(axis=2) / np.maximum(density.mean(axis=2), 1e-12)
    floor = 0.1 / np.maximum(pix_per_cell.reshape(n_rings, N_SECTORS).sum(1), 1)[None] / photons[:, None]
    return np.hstack([np.log(profile + floor), np.log(contrast + 0.05)])


def naive_classes(counts: sp.csr_matrix, detector: Detector, n_classes: int, seed: int = 0,
                  n_components: int = 10) -> np.ndarray:
    """(N,) k-means labels of the standardised, PCA-reduced :func:`ring_features`."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = ring_features(counts, detector)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    k = min(n_components, x.shape[1], x.shape[0])
    z = PCA(n_components=k, random_state=seed).fit_transform(x)
    return KMeans(n_clusters=int(n_classes), n_init=4, random_state=seed).fit_predict(z)


def shape_labels(class_name: np.ndarray, melt_t: np.ndarray) -> np.ndarray:
    """(N,) shape label per frame from simulation truth (see the module docstring)."""
    name = np.asarray(class_name).astype(str)
    t = np.asarray(melt_t, dtype=np.float64)
    out = np.full(name.shape, "contaminant", dtype=object)
    out[name == "cube"] = "cube-like"
    out[name == "sphere"] = "sphere-like"
    melt = name == "melt"
    out[melt & (t <= 0.2)] = "cube-like"
    out[melt & (t >= 0.8)] = "sphere-like"
    out[melt & (t > 0.2) & (t < 0.8)] = "intermediate"
    return out


def shape_purity(classes: np.ndarray, labels: np.ndarray) -> float:
    """Frame-weighted purity: sum over classes of its majority label's count / N."""
    classes = np.asarray(classes)
    labels = np.asarray(labels)
    if classes.size == 0:
        return float("nan")
    _, cls_idx = np.unique(classes, return_inverse=True)
    _, lab_idx = np.unique(labels, return_inverse=True)
    table = np.zeros((cls_idx.max() + 1, lab_idx.max() + 1))
    np.add.at(table, (cls_idx, lab_idx), 1)
    return float(table.max(axis=1).sum() / classes.size)
