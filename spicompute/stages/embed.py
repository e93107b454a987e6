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

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.io.provenance import stamp, write_json_atomic
from spicompute.io.storage import memory_output
from spicompute.io.tables import write_table
from spicompute.landscape.commonlines import read_ccmatrix
from spicompute.params import choice, positive, with_defaults
from spicompute.stages._common import stage_params

COMMAND = "embed"
OUTPUTS = ("out", "part", "metrics")   # --frames-table is an input here
HELP = "CLPCA (PCA of the CC matrix), Isomap, spectral, t-SNE embeddings and clusters"

log = logging.getLogger("spicompute.embed")

METHODS = ("pc", "isomap", "spectral", "tsne")
DEFAULTS = {"seed": 0, "n_components": 3, "methods": list(METHODS), "isomap_neighbors": 10,
            "tsne_perplexity": 30.0, "cluster_on": "pc", "cluster_max_k": 8, "stability_null": 20}


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
    q["stability_null"] = positive("embed.stability_null", q["stability_null"], integer=True, allow_zero=True)
    return q


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


def _stability(ccf, res: dict, runs, p: dict) -> dict | None:
    """Reproducibility of pc_1..n across disjoint run halves (spicompute.landscape.stability)."""
    from spicompute.landscape.stability import component_stability

    try:
        out = component_stability(ccf.cc, ccf.usable, res["coords"]["pc"], runs,
                                  n_null=p["stability_null"], seed=p["seed"])
    except ValueError as exc:  # too few averages for two halves: say so, do not fail the stage
        log.warning("embed: no component stability: %s", exc)
        return None
    for j in np.flatnonzero(out.flagged):
        log.warning("landscape axis pc_%d is not reproduced by disjoint %s halves (|r| %.2f, null 95%% %.2f): "
                    "it may be noise", j + 1, "run" if out.split == "runs" else "average",
                    out.stability[j], out.null_q95[j])
    return out.as_dict()


def size_correlations(coords: np.ndarray, size_scale: np.ndarray, usable: np.ndarray) -> dict:
    """{pc_j: Spearman rho with the averages' size scale} over the usable averages: an axis that
    follows it maps particle size, which is not shape (docs/ccmatrix_embed.md, "Size spread")."""
    from scipy.stats import spearmanr

    out = {}
    for j in range(coords.shape[1]):
        x, y = coords[usable, j], np.asarray(size_scale)[usable]
        ok = np.isfinite(x) & np.isfinite(y)
        rho = spearmanr(x[ok], y[ok])[0] if ok.sum() >= 3 and np.ptp(y[ok]) > 0 else np.nan
        out[f"pc_{j + 1}"] = None if not np.isfinite(rho) else round(float(rho), 4)
    return out


def run(args) -> int:
    p = check_params(stage_params(args, COMMAND))
    ccf = read_ccmatrix(args.ccmatrix)
    m = len(ccf.average_id)
    if m < 5:
        raise InputError(args.ccmatrix, "cc", f"needs at least 5 averages to embed, got {m}")
    log.info("embed: %d averages, methods %s", m, ", ".join(p["methods"]))
    from spicompute.landscape.embedding import compute_embeddings

    res = compute_embeddings(ccf.cc, p, ccf.usable)
    part = table(ccf.average_id, res)
    part["landscape_usable"] = ccf.usable
    if ccf.size_scale is not None:   # relative particle size (fringe spacing), from ccmatrix
        part["size_scale"] = ccf.size_scale
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
    runs = None
    if args.frames_table and args.frames:
        from spicompute.landscape.nuisance import nuisance_correlations, nuisance_table

        nuisance = nuisance_table(args.frames_table, args.frames, ccf.average_id)
        runs = nuisance["run"].to_numpy()
        corr = nuisance_correlations(res["coords"]["pc"], nuisance, ccf.usable)
        metrics["nuisance_spearman"] = corr
        metrics["nuisance_warnings"] = [f"{pc} follows {name} (Spearman {rho:+.2f})"
                                        for pc, row in corr.items() for name, rho in row.items()
                                        if rho is not None and abs(rho) > 0.5]
        for w in metrics["nuisance_warnings"]:
            log.warning("landscape axis %s: it may map noise or fluence rather than shape", w)
    if ccf.size_scale is not None:
        metrics["size_spearman"] = size_correlations(res["coords"]["pc"], ccf.size_scale, ccf.usable)
        for pc, rho in metrics["size_spearman"].items():
            if rho is not None and abs(rho) > 0.8:
                log.info("landscape axis %s follows the averages' size scale (Spearman %+.2f): a size axis; "
                         "ccmatrix.size_normalise: true compares shape at a common size", pc, rho)
    metrics["component_stability"] = _stability(ccf, res, runs, p)
    write_json_atomic(args.metrics, metrics)
    log.info("embed: explained variance %s, %d clusters (silhouette %.3f) -> %s",
             np.round(res["pca"].explained_variance_ratio, 3).tolist(), clus.k,
             clus.silhouette, args.part)
    return 0
