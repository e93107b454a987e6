"""Is a CLPCA axis structure or noise?  Its reproducibility across disjoint halves of the data.

On real data there is no truth to say whether ``pc_3`` is a shape axis or the
shot noise of the averages.  What a scientist can check is whether the axis
comes back when the landscape is recomputed from independent data: the
bootstrap runs of the 2D EMC are independent classifications, so the
averages of half of the runs and of the other half give two independent
estimates of every component.

:func:`component_stability` for each shown component ``pc_j``:

1. splits the usable averages into two disjoint halves by bootstrap run
   (alternate runs; by alternate average when there is a single run, which
   is then stated);
2. fits the PCA of the (double-centred, below) CC matrix on each half alone:
   on the block of that half's averages against each other, and scores every
   average by its CCs with that half's averages only.  The two estimates of an
   average's coordinate thus come from its CCs with two disjoint sets of
   averages, classified in disjoint EMC runs;
3. takes each half's estimate of the shown component (its projection onto
   the span of that half's top n + 2 component scores, so a swap of order or
   a mixing between halves does not read as instability) and reports
   ``stability`` = |Pearson r| between the two halves' estimates over all
   usable averages;
4. calibrates that number against a null: the same procedure on CC matrices
   whose off-diagonal entries are shuffled (no structure left, the values
   kept).  An axis is *reproduced* when its stability exceeds the null's 95th
   percentile and ``MIN_STABILITY``.

A shape axis is reproduced by both halves (|r| near 1); a noise axis is a
different direction in each (|r| near the null).

One axis would be reproduced even by averages with no shape in common: each
average's overall CC *level* (the mean of its row: how well it matches all
others, set by its noise and photon statistics) is a property of the average
itself, so both halves find it.  On 150 structureless averages through the
real common-line code, pc_1 is that level (Spearman 0.9998 with the row
mean) and its raw half agreement is 0.99.  Structure means more than a level
per average: CCs that depend on the *pair* (cc_ij is not a_i + a_j).  The
halves are therefore compared on the double-centred CC matrix (row and
column means removed, as in classical MDS), where a level axis has nothing
left to reproduce while a shape axis (e.g. cc_ij ~ t_i t_j) keeps its
structure.  ``level_rho`` (|Spearman| of each component with the row mean)
is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STABILITY = 0.5  # an axis two independent halves reproduce at |r| < 0.5 is not one to read


@dataclass
class Stability:
    """Per shown component (n,): stability, null_q95, reproduced, level_rho, flagged.

    split: "runs" (halves = alternate bootstrap runs) or "averages" (single run:
    alternate averages); n_half: averages in each half.
    """

    stability: np.ndarray
    null_q95: np.ndarray
    reproduced: np.ndarray
    level_rho: np.ndarray
    split: str
    n_half: tuple[int, int]

    @property
    def flagged(self) -> np.ndarray:
        return ~self.reproduced

    def as_dict(self, prefix: str = "pc") -> dict:
        rows = {}
        for j in range(len(self.stability)):
            rows[f"{prefix}_{j + 1}"] = {"stability": round(float(self.stability[j]), 4),
                                         "null_q95": round(float(self.null_q95[j]), 4),
                                         "reproduced": bool(self.reproduced[j]),
                                         "level_rho": round(float(self.level_rho[j]), 4),
                                         "flagged": bool(self.flagged[j])}
        return {"split": self.split, "n_half": list(self.n_half), "min_stability": MIN_STABILITY,
                "components": rows}


def split_halves(runs: np.ndarray | None, n: int) -> tuple[np.ndarray, str]:
    """(n,) bool, True = half A; alternate bootstrap runs, or alternate averages for a single run."""
    if runs is not None:
        runs = np.asarray(runs)
        values = np.unique(runs[~_isnan(runs)])
        if len(values) >= 2:
            half_a = np.isin(runs, values[::2])
            return half_a, "runs"
    return (np.arange(n) % 2) == 0, "averages"


def _isnan(x: np.ndarray) -> np.ndarray:
    return np.isnan(x) if np.issubdtype(x.dtype, np.floating) else np.zeros(x.shape, bool)


def _top_components(rows: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (c,), components (k, c)) of the rows' PCA; randomized SVD above 600 columns."""
    mean = rows.mean(0)
    x = rows - mean
    k = min(k, min(x.shape))
    if min(x.shape) > 600:
        from sklearn.utils.extmath import randomized_svd

        _, _, vt = randomized_svd(x, k, n_iter=6, random_state=seed)
    else:
        vt = np.linalg.svd(x, full_matrices=False)[2][:k]
    return mean, vt


def _abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|Pearson r| between the columns of a (m, p) and b (m, q) -> (p, q)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    na = np.linalg.norm(a, axis=0)
    nb = np.linalg.norm(b, axis=0)
    return np.abs(a.T @ b) / np.maximum(np.outer(na, nb), 1e-300)


def _in_subspace(shown: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Least-squares projection of each column of ``shown`` (m, n) onto the span of ``scores`` (m, q)."""
    z = scores - scores.mean(0)
    y = shown - shown.mean(0)
    coef, *_ = np.linalg.lstsq(z, y, rcond=None)
    return z @ coef


def half_agreement(cc: np.ndarray, half_a: np.ndarray, n_components: int, seed: int = 0,
                   shown: np.ndarray | None = None) -> np.ndarray:
    """(n_components,) |r| between the two halves' estimates of each shown component.

    cc: (m, m) (double-centred) CC matrix of the usable averages; half_a: (m,) bool.
    ``shown``: (m, n) scores of the components to judge (default: the PCA of all
    rows).  Half H fits its PCA on its own block ``cc[H][:, H]`` and scores every
    average by its CCs with the averages of H only (``cc[:, H]``), so the two
    estimates of an average come from its CCs with two disjoint sets of averages.
    Each half's estimate of ``shown[:, j]`` is its projection onto the span of that
    half's top n + 2 scores (components that swap order or mix between halves
    still count as reproduced).
    """
    cc = np.asarray(cc, np.float64)
    k = n_components + 2
    if shown is None:
        mean, comps = _top_components(cc, n_components, seed)
        shown = (cc - mean) @ comps.T
    est = []
    for rows in (half_a, ~half_a):
        mean, comps = _top_components(cc[np.ix_(rows, rows)], k, seed)
        est.append(_in_subspace(shown, (cc[:, rows] - mean) @ comps.T))
    return np.array([_abs_corr(est[0][:, [j]], est[1][:, [j]])[0, 0] for j in range(shown.shape[1])])


def shuffled(cc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The off-diagonal entries of a symmetric matrix shuffled (kept symmetric), double-centred again."""
    m = len(cc)
    iu = np.triu_indices(m, 1)
    values = cc[iu].copy()
    rng.shuffle(values)
    out = np.zeros_like(cc)
    out[iu] = values
    out.T[iu] = values
    np.fill_diagonal(out, np.diag(cc))
    return double_centred(out)


def double_centred(cc: np.ndarray) -> np.ndarray:
    """cc - row mean - column mean + grand mean: what is left once each average's CC level is removed."""
    cc = np.asarray(cc, np.float64)
    return cc - cc.mean(1, keepdims=True) - cc.mean(0, keepdims=True) + cc.mean()


def component_stability(cc: np.ndarray, usable: np.ndarray, shown: np.ndarray, runs: np.ndarray | None = None,
                        *, n_null: int = 20, seed: int = 0) -> Stability:
    """Reproducibility of each shown CLPCA component across disjoint run halves.

    cc: (M, M) common-line CC matrix; usable: (M,) bool, the averages the
    landscape was fitted on; shown: (M, n) their scores (``pc_1..pc_n``);
    runs: (M,) bootstrap run of each average (None: split by alternate
    average); n_null: shuffled CC matrices for the null.

    Cost: n_null + 1 PCAs of an (M, M) matrix and 2 (n_null + 1) of an (M/2, M/2) one
    (randomized above 600 averages), a few (M, M) float64 copies: ~1 s for 400 averages
    with 20 null matrices.
    """
    usable = np.asarray(usable, bool)
    idx = np.flatnonzero(usable)
    sub = np.asarray(cc, np.float64)[np.ix_(idx, idx)]
    scores = np.asarray(shown, np.float64)[idx]
    n = scores.shape[1]
    half_a, split = split_halves(None if runs is None else np.asarray(runs)[idx], len(idx))
    if min(half_a.sum(), (~half_a).sum()) < n + 3:
        raise ValueError(f"component stability needs >= {n + 3} usable averages in each half, "
                         f"got {int(half_a.sum())} and {int((~half_a).sum())}")
    level = _abs_spearman_columns(scores, sub.mean(1))
    sub = double_centred(sub)
    stability = half_agreement(sub, half_a, n, seed, shown=scores)
    rng = np.random.default_rng(seed)
    null = np.empty((n_null, n))
    for i in range(n_null):
        null[i] = half_agreement(shuffled(sub, rng), half_a, n, seed)
    q95 = np.quantile(null, 0.95, axis=0) if n_null else np.zeros(n)
    reproduced = (stability > q95) & (stability >= MIN_STABILITY)
    return Stability(stability, q95, reproduced, level, split, (int(half_a.sum()), int((~half_a).sum())))


def _abs_spearman_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _abs_corr(np.apply_along_axis(rankdata, 0, x), rankdata(y)[:, None])[:, 0]
