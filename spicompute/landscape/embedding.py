"""Embeddings of the common-line CC matrix ("CLPCA space") and clustering.

* :func:`clpca` — PCA of the centred rows of the CC matrix (each average is
  described by its CCs with all averages), 3 components by default, with a
  sign convention that makes reruns comparable.
* :func:`isomap_embedding`, :func:`spectral_embedding`, :func:`tsne_embedding`
  — the paper's Appendix A comparison, on the precomputed distance
  ``1 - CC`` (Isomap, t-SNE) or the affinity ``exp(-d^2 / 2 s^2)`` with ``s``
  the median off-diagonal distance (spectral).
* :func:`auto_cluster` — Gaussian mixture on an embedding with the number of
  components chosen by BIC, scored by the silhouette coefficient.
* :func:`procrustes_align` — rotate/reflect, scale and shift one landscape
  onto another (same averages, two runs) and report the residual.

All functions are deterministic for a fixed ``seed``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from spicompute.errors import ParameterError


def cc_distance(cc: np.ndarray) -> np.ndarray:
    """Symmetric distance ``1 - CC`` with zero diagonal, (M, M) float64 >= 0."""
    cc = np.asarray(cc, dtype=np.float64)
    if cc.ndim != 2 or cc.shape[0] != cc.shape[1]:
        raise ValueError(f"CC matrix must be square, got {cc.shape}")
    d = np.clip(1.0 - 0.5 * (cc + cc.T), 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def orient_signs(scores: np.ndarray, loadings: np.ndarray | None = None):
    """Sign convention for components: positive skewness of the scores.

    A component's sign is arbitrary; we flip it so that its long tail (e.g.
    the contaminants, a minority) lies on the positive side.  When a
    component is (nearly) symmetric, the sign makes the largest-magnitude
    loading (or score) positive.  Returns (scores, loadings, signs).
    """
    scores = np.asarray(scores, dtype=np.float64)
    centred = scores - scores.mean(axis=0)
    sd = centred.std(axis=0)
    skew = (centred ** 3).mean(axis=0) / np.maximum(sd, 1e-300) ** 3
    ref = loadings.T if loadings is not None else scores
    idx = np.abs(ref).argmax(axis=0)
    fallback = np.sign(ref[idx, np.arange(ref.shape[1])])
    signs = np.where(np.abs(skew) > 1e-3, np.sign(skew), fallback)
    signs[signs == 0] = 1.0
    out_loadings = None if loadings is None else loadings * signs[:, None]
    return scores * signs, out_loadings, signs


@dataclass
class PCAResult:
    """CLPCA coordinates.

    coords : (M, k) scores; explained_variance_ratio : (k,)
    mean : (M,) column means of the CC matrix; components : (k, M) loadings
    (project a new average's CC row ``c`` with ``(c - mean) @ components.T``).
    """

    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    components: np.ndarray


def clpca(cc: np.ndarray, n_components: int = 3, seed: int = 0) -> PCAResult:
    """PCA of the CC matrix rows (centred), the paper's "CLPCA space"."""
    from sklearn.decomposition import PCA

    cc = np.asarray(cc, dtype=np.float64)
    m = cc.shape[0]
    k = min(int(n_components), m)
    if k < 1:
        raise ParameterError("embed.n_components", "needs >= 1 component and >= 1 average")
    pca = PCA(n_components=k, svd_solver="full", random_state=seed)
    scores = pca.fit_transform(cc)
    scores, comps, _ = orient_signs(scores, pca.components_)
    return PCAResult(scores, pca.explained_variance_ratio_.copy(), pca.mean_.copy(), comps)


def isomap_embedding(distance: np.ndarray, n_components: int = 3,
                     n_neighbors: int = 10) -> np.ndarray:
    """Isomap on a precomputed distance matrix, (M, n_components)."""
    from sklearn.manifold import Isomap

    m = distance.shape[0]
    nn = max(1, min(int(n_neighbors), m - 1))
    # the dense eigensolver: sklearn's default (ARPACK above 200 points) starts from an unseeded
    # random vector, so reruns would differ in the last bits and DVC would redo every later stage
    emb = Isomap(n_neighbors=nn, n_components=min(n_components, m - 1), metric="precomputed",
                 eigen_solver="dense")
    with warnings.catch_warnings():
        # separate groups (contaminants) leave the neighbour graph disconnected;
        # sklearn then joins the components by their closest pairs, which is fine
        warnings.filterwarnings("ignore", message=".*connected components.*")
        warnings.filterwarnings("ignore", message=".*sparsity structure.*")
        coords = emb.fit_transform(distance)
    return orient_signs(_pad(coords, n_components))[0]


def spectral_embedding(distance: np.ndarray, n_components: int = 3, seed: int = 0) -> np.ndarray:
    """Spectral embedding of the Gaussian affinity of ``distance``, (M, n_components)."""
    from sklearn.manifold import SpectralEmbedding

    m = distance.shape[0]
    off = distance[~np.eye(m, dtype=bool)]
    scale = float(np.median(off)) if off.size else 1.0
    scale = scale if scale > 0 else 1.0
    affinity = np.exp(-(distance / scale) ** 2 / 2.0)
    emb = SpectralEmbedding(n_components=min(n_components, m - 1), affinity="precomputed",
                            random_state=seed)
    coords = emb.fit_transform(affinity)
    return orient_signs(_pad(coords, n_components))[0]


def tsne_embedding(distance: np.ndarray, n_components: int = 3, perplexity: float = 30.0,
                   seed: int = 0, max_iter: int = 1000) -> np.ndarray:
    """t-SNE on a precomputed distance matrix, (M, n_components).

    The perplexity is capped at ``(M - 1) / 3`` for small sets.
    """
    from sklearn.manifold import TSNE

    m = distance.shape[0]
    perp = float(max(1.0, min(perplexity, (m - 1) / 3.0)))
    method = "barnes_hut" if n_components <= 3 else "exact"
    emb = TSNE(n_components=n_components, metric="precomputed", init="random",
               perplexity=perp, random_state=seed, method=method,
               max_iter=max(250, int(max_iter)))
    return orient_signs(emb.fit_transform(distance))[0]


def _pad(coords: np.ndarray, k: int) -> np.ndarray:
    if coords.shape[1] >= k:
        return coords[:, :k]
    return np.hstack([coords, np.zeros((coords.shape[0], k - coords.shape[1]))])


@dataclass
class Clustering:
    """labels (M,) int ordered by cluster size (0 = largest); probability (M,)
    of the assigned cluster; k; bic per tried k; silhouette (NaN for k = 1)."""

    labels: np.ndarray
    probability: np.ndarray
    k: int
    bic: dict = field(default_factory=dict)
    silhouette: float = float("nan")


def auto_cluster(coords: np.ndarray, max_k: int = 8, seed: int = 0,
                 min_k: int = 1) -> Clustering:
    """Gaussian mixture (full covariance) with k in ``[min_k, max_k]`` by BIC.

    Features are standardised first.  The silhouette coefficient of the
    chosen clustering (Euclidean, standardised space) is reported.
    """
    from sklearn.metrics import silhouette_score
    from sklearn.mixture import GaussianMixture

    x = np.asarray(coords, dtype=np.float64)
    m = x.shape[0]
    if max_k < 1 or min_k < 1 or min_k > max_k:
        raise ParameterError("embed.cluster_max_k", f"bad range [{min_k}, {max_k}]")
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    best, bic = None, {}
    for k in range(min_k, min(max_k, max(1, m // 2)) + 1):
        gm = GaussianMixture(n_components=k, covariance_type="full", n_init=3,
                             random_state=seed, reg_covar=1e-4).fit(x)
        bic[k] = float(gm.bic(x))
        if best is None or bic[k] < bic[best[0]]:
            best = (k, gm)
    k, gm = best
    prob = gm.predict_proba(x)
    raw = prob.argmax(axis=1)
    # relabel by size so that cluster 0 is the largest (stable across reruns)
    order = np.argsort(-np.bincount(raw, minlength=k), kind="stable")
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    labels = relabel[raw]
    n_used = len(np.unique(labels))
    sil = float(silhouette_score(x, labels)) if 1 < n_used < m else float("nan")
    return Clustering(labels, prob.max(axis=1), n_used, bic, sil)


def procrustes_align(reference: np.ndarray, other: np.ndarray, *, scale: bool = True):
    """Best similarity transform of ``other`` onto ``reference`` (rows paired).

    Finds rotation/reflection ``R``, scale ``s`` and shift ``t`` minimising
    ``|| reference - (s other R + t) ||``.

    Returns
    -------
    aligned : (M, k) ``other`` mapped into the reference frame
    rotation : (k, k)
    rmsd : root-mean-square residual distance, in reference units
    relative : residual relative to the reference's spread (0 = identical
        shapes, ~1 = unrelated)
    """
    from scipy.linalg import orthogonal_procrustes

    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"landscapes differ in shape: {a.shape} vs {b.shape}")
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    a0, b0 = a - ma, b - mb
    rot, sv = orthogonal_procrustes(b0, a0)
    norm_b = (b0 ** 2).sum()
    s = (sv / norm_b) if (scale and norm_b > 0) else 1.0
    aligned = s * b0 @ rot + ma
    resid = ((a - aligned) ** 2).sum(axis=1)
    rmsd = float(np.sqrt(resid.mean()))
    spread = float(np.sqrt((a0 ** 2).sum(axis=1).mean()))
    return aligned, rot, rmsd, (rmsd / spread if spread > 0 else float("nan"))


def compute_embeddings(cc: np.ndarray, p: dict, usable: np.ndarray | None = None) -> dict:
    """All embeddings and the clustering of one CC matrix (dict of results).

    Only ``usable`` averages (default: all) shape the embeddings; the others
    are projected into the CLPCA space through the fitted PCA (their CC rows
    against the usable averages), get NaN in the non-linear embeddings and
    cluster -1.
    """
    k, seed = p["n_components"], p["seed"]
    m = cc.shape[0]
    usable = np.ones(m, bool) if usable is None else np.asarray(usable, bool)
    u = np.flatnonzero(usable)
    out, seconds = {}, {}
    t = time.perf_counter()
    pca = clpca(cc[np.ix_(u, u)], k, seed=seed)
    pc_all = (np.asarray(cc, np.float64)[:, u] - pca.mean) @ pca.components.T
    pca.coords = pc_all
    out["pc"] = pc_all
    seconds["pc"] = time.perf_counter() - t
    dist = cc_distance(cc[np.ix_(u, u)])
    for method in p["methods"]:
        t = time.perf_counter()
        if method == "isomap":
            out[method] = isomap_embedding(dist, k, p["isomap_neighbors"])
        elif method == "spectral":
            out[method] = spectral_embedding(dist, k, seed=seed)
        elif method == "tsne":
            out[method] = tsne_embedding(dist, k, p["tsne_perplexity"], seed=seed)
        if method != "pc":
            full = np.full((m, out[method].shape[1]), np.nan)
            full[u] = out[method]
            out[method] = full
            seconds[method] = time.perf_counter() - t
    clus = auto_cluster(out[p["cluster_on"]][u], max_k=p["cluster_max_k"], seed=seed)
    labels = np.full(m, -1, np.int64)
    labels[u] = clus.labels
    prob = np.zeros(m)
    prob[u] = clus.probability
    clus.labels, clus.probability = labels, prob
    return {"coords": out, "pca": pca, "cluster": clus, "seconds": seconds, "usable": usable}
