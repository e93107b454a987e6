"""Embeddings of the common-line CC matrix: CLPCA space, Isomap, spectral, t-SNE.

Reads the CC matrix file, computes PCA of the CC rows (the paper's "CLPCA
space", 3 components, explained variance saved), Isomap and t-SNE on the
distance ``1 - CC``, a spectral embedding of its Gaussian affinity, and an
automatic Gaussian-mixture clustering (k by BIC, silhouette score).

Writes ``results/parts/embed.parquet`` (``average_id, pc_1.., isomap_1..,
spectral_1.., tsne_1.., cluster, cluster_prob``), ``data/embedding.h5``
(coordinates + the PCA model to project new CC rows) and a metrics JSON.
See docs/ccmatrix_embed.md.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from spicompute.landscape.commonlines import read_ccmatrix
from spicompute.errors import InputError, ParameterError
from spicompute.io.provenance import stamp, write_json_atomic
from spicompute.io.storage import memory_output
from spicompute.io.tables import write_table
from spicompute.params import choice, positive, with_defaults
from spicompute.stages._common import stage_params
from spicompute.landscape import embedding as em

COMMAND = "embed"
HELP = "CLPCA (PCA of the CC matrix), Isomap, spectral, t-SNE embeddings and clusters"

log = logging.getLogger("spicompute.embed")

METHODS = ("pc", "isomap", "spectral", "tsne")
DEFAULTS = {"seed": 0, "n_components": 3, "methods": list(METHODS), "isomap_neighbors": 10,
            "tsne_perplexity": 30.0, "cluster_on": "pc", "cluster_max_k": 8}


def add_arguments(parser) -> None:
    parser.add_argument("--ccmatrix", default="data/ccmatrix.h5", help="CC matrix file (input)")
    parser.add_argument("--part", default="results/parts/embed.parquet",
                        help="per-average part table (output)")
    parser.add_argument("--out", default="data/embedding.h5", help="embedding file (output)")
    parser.add_argument("--metrics", default="metrics/embed.json", help="metrics JSON")
    parser.add_argument("--frames-table", default="", help="results/frames.parquet, for the nuisance "
                        "diagnostics (occupancy, photons per frame, bootstrap run); '' to skip")
    parser.add_argument("--frames", default="", help="data/frames.h5 (photons per frame) for the diagnostics")


def check_params(p: dict) -> dict:
    q = with_defaults("embed", p, DEFAULTS)
    q["seed"] = positive("embed.seed", q["seed"], integer=True, allow_zero=True)
    q["n_components"] = positive("embed.n_components", q["n_components"], integer=True)
    if not isinstance(q["methods"], (list, tuple)) or not q["methods"]:
        raise ParameterError("embed.methods", f"must be a non-empty list, got {q['methods']!r}")
    for m in q["methods"]:
        choice("embed.methods", m, METHODS)
    if "pc" not in q["methods"]:
        raise ParameterError("embed.methods", "must include 'pc' (CLPCA space)")
    q["isomap_neighbors"] = positive("embed.isomap_neighbors", q["isomap_neighbors"], integer=True)
    q["tsne_perplexity"] = positive("embed.tsne_perplexity", q["tsne_perplexity"])
    choice("embed.cluster_on", q["cluster_on"], q["methods"])
    q["cluster_max_k"] = positive("embed.cluster_max_k", q["cluster_max_k"], integer=True)
    return q


def compute(cc: np.ndarray, p: dict, usable: np.ndarray | None = None) -> dict:
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
    pca = em.clpca(cc[np.ix_(u, u)], k, seed=seed)
    pc_all = (np.asarray(cc, np.float64)[:, u] - pca.mean) @ pca.components.T
    pca.coords = pc_all
    out["pc"] = pc_all
    seconds["pc"] = time.perf_counter() - t
    dist = em.cc_distance(cc[np.ix_(u, u)])
    for method in p["methods"]:
        t = time.perf_counter()
        if method == "isomap":
            out[method] = em.isomap_embedding(dist, k, p["isomap_neighbors"])
        elif method == "spectral":
            out[method] = em.spectral_embedding(dist, k, seed=seed)
        elif method == "tsne":
            out[method] = em.tsne_embedding(dist, k, p["tsne_perplexity"], seed=seed)
        if method != "pc":
            full = np.full((m, out[method].shape[1]), np.nan)
            full[u] = out[method]
            out[method] = full
            seconds[method] = time.perf_counter() - t
    clus = em.auto_cluster(out[p["cluster_on"]][u], max_k=p["cluster_max_k"], seed=seed)
    labels = np.full(m, -1, np.int64)
    labels[u] = clus.labels
    prob = np.zeros(m)
    prob[u] = clus.probability
    clus.labels, clus.probability = labels, prob
    return {"coords": out, "pca": pca, "cluster": clus, "seconds": seconds, "usable": usable}


NUISANCES = ("n_frames", "mean_photons", "run")


def nuisance_table(frames_table: str, frames_h5: str, average_id: np.ndarray) -> pd.DataFrame:
    """Per average: member frames, mean photons per member frame, bootstrap run.

    These carry no shape information; a landscape axis that follows them maps
    noise or fluence, not structure (issue: at low photon counts one did).
    """
    from spicompute.io.frames import open_h5
    from spicompute.io.tables import read_table

    ft = read_table(frames_table)
    for col in ("frame_id", "run", "average_id"):
        if col not in ft.columns:
            raise InputError(frames_table, col, "column missing")
    ft = ft[ft["average_id"] >= 0]
    with open_h5(frames_h5) as h5:
        if "frames/photons" not in h5 or "frames/frame_id" not in h5:
            raise InputError(frames_h5, "frames/photons", "dataset missing")
        photons = pd.Series(h5["frames/photons"][()], index=h5["frames/frame_id"][()])
    ft = ft.assign(photons=photons.reindex(ft["frame_id"].to_numpy()).to_numpy())
    agg = ft.groupby("average_id").agg(n_frames=("frame_id", "size"), mean_photons=("photons", "mean"),
                                       run=("run", "first"))
    return agg.reindex(average_id).reset_index().rename(columns={"index": "average_id"})


def nuisance_correlations(coords: np.ndarray, nuisance: pd.DataFrame, usable: np.ndarray) -> dict:
    """Spearman rho of every pc with every nuisance variable, over the usable averages."""
    from scipy.stats import spearmanr

    out = {}
    for j in range(coords.shape[1]):
        row = {}
        for name in NUISANCES:
            v = nuisance[name].to_numpy(np.float64)
            ok = usable & np.isfinite(v) & np.isfinite(coords[:, j])
            rho = spearmanr(coords[ok, j], v[ok])[0] if ok.sum() > 3 and np.ptp(v[ok]) > 0 else float("nan")
            row[name] = None if not np.isfinite(rho) else float(rho)
        out[f"pc_{j + 1}"] = row
    return out


def table(average_id: np.ndarray, res: dict) -> pd.DataFrame:
    cols = {"average_id": np.asarray(average_id, np.int64)}
    for method, x in res["coords"].items():
        for j in range(x.shape[1]):
            cols[f"{method}_{j + 1}"] = x[:, j].astype(np.float64)
    cols["cluster"] = res["cluster"].labels.astype(np.int64)
    cols["cluster_prob"] = res["cluster"].probability.astype(np.float64)
    return pd.DataFrame(cols)


def write_embedding(path, average_id, res: dict, params: dict) -> None:
    import h5py

    with memory_output(path) as tmp, h5py.File(tmp, "w") as h5:
        stamp(h5, COMMAND, params)
        h5.create_dataset("average_id", data=np.asarray(average_id, np.int64))
        for method, x in res["coords"].items():
            h5.create_dataset(f"coords/{method}", data=x.astype(np.float64))
        g = h5.create_group("pca")
        g.create_dataset("explained_variance_ratio", data=res["pca"].explained_variance_ratio)
        g.create_dataset("mean", data=res["pca"].mean)
        g.create_dataset("components", data=res["pca"].components)
        g.create_dataset("usable", data=np.asarray(res["usable"], np.uint8))
        g.attrs["usage"] = "coords = (cc_row[usable] - mean) @ components.T (fitted on the usable averages)"
        h5.create_dataset("cluster", data=res["cluster"].labels.astype(np.int64))
        h5["cluster"].attrs["method"] = f"GaussianMixture on {params['cluster_on']}, k by BIC"


def run(args) -> int:
    p = check_params(stage_params(args, COMMAND))
    ccf = read_ccmatrix(args.ccmatrix)
    m = len(ccf.average_id)
    if m < 5:
        raise InputError(args.ccmatrix, "cc", f"needs at least 5 averages to embed, got {m}")
    log.info("embed: %d averages, methods %s", m, ", ".join(p["methods"]))
    res = compute(ccf.cc, p, ccf.usable)
    part = table(ccf.average_id, res)
    part["landscape_usable"] = ccf.usable
    write_table(args.part, part, stage=COMMAND)
    write_embedding(args.out, ccf.average_id, res, p)
    clus = res["cluster"]
    metrics = {
        "n_averages": m,
        "explained_variance_ratio": [float(v) for v in res["pca"].explained_variance_ratio],
        "explained_variance_total": float(res["pca"].explained_variance_ratio.sum()),
        "n_clusters": int(clus.k), "silhouette": clus.silhouette,
        "cluster_sizes": [int(c) for c in np.bincount(clus.labels[clus.labels >= 0])],
        "cluster_on": p["cluster_on"], "seconds": res["seconds"],
        "n_unusable": int((~ccf.usable).sum()),
    }
    if args.frames_table and args.frames:
        nuisance = nuisance_table(args.frames_table, args.frames, ccf.average_id)
        corr = nuisance_correlations(res["coords"]["pc"], nuisance, ccf.usable)
        metrics["nuisance_spearman"] = corr
        metrics["nuisance_warnings"] = [f"{pc} follows {name} (Spearman {rho:+.2f})"
                                        for pc, row in corr.items() for name, rho in row.items()
                                        if rho is not None and abs(rho) > 0.5]
        for w in metrics["nuisance_warnings"]:
            log.warning("landscape axis %s: it may map noise or fluence rather than shape", w)
    write_json_atomic(args.metrics, metrics)
    log.info("embed: explained variance %s, %d clusters (silhouette %.3f) -> %s",
             np.round(res["pca"].explained_variance_ratio, 3).tolist(), clus.k,
             clus.silhouette, args.part)
    return 0
