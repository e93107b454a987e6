"""CLPCA and the other embeddings of a CC matrix; clustering; Procrustes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from spicompute.landscape.embedding import (
    auto_cluster,
    cc_distance,
    clpca,
    isomap_embedding,
    orient_signs,
    procrustes_align,
    spectral_embedding,
    tsne_embedding,
)


def landscape_cc(seed: int = 0, n_family: int = 60, n_other: int = 20):
    """CC matrix of a continuous family (parameter t) plus a separate group.

    Averages are points in a hidden feature space: the family lies on a
    curve parametrised by t in [0, 1], the contaminants in a far blob;
    CC = exp(-|f_i - f_j|^2 / 2) plus small symmetric noise.
    """
    rng = np.random.default_rng(seed)
    t = rng.random(n_family)
    fam = np.stack([2.0 * t, 0.6 * np.sin(3 * t), np.zeros_like(t)], 1)
    other = rng.normal(scale=0.25, size=(n_other, 3)) + np.array([1.0, 0.0, 2.2])
    f = np.vstack([fam, other]) + rng.normal(scale=0.05, size=(n_family + n_other, 3))
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
    cc = np.exp(-d2 / 2)
    noise = rng.normal(scale=0.01, size=cc.shape)
    cc = np.clip(cc + (noise + noise.T) / 2, -1, 1)
    np.fill_diagonal(cc, 1.0)
    label = np.r_[np.zeros(n_family, int), np.ones(n_other, int)]
    return cc.astype(np.float32), t, label


def test_clpca_separates_groups_and_tracks_parameter():
    cc, t, label = landscape_cc()
    res = clpca(cc, 3)
    assert res.coords.shape == (80, 3)
    evr = res.explained_variance_ratio
    assert np.all(np.diff(evr) <= 1e-12) and evr.sum() <= 1 + 1e-9 and evr[0] > 0.3
    # some component separates contaminants from the family (linearly)
    sep = max(
        min(abs(res.coords[label == 1, k].min() - res.coords[label == 0, k].max()),
            abs(res.coords[label == 0, k].min() - res.coords[label == 1, k].max()))
        if (res.coords[label == 1, k].min() > res.coords[label == 0, k].max()
            or res.coords[label == 0, k].min() > res.coords[label == 1, k].max()) else 0.0
        for k in range(3))
    assert sep > 0
    fam = label == 0
    rho = max(abs(spearmanr(res.coords[fam, k], t)[0]) for k in range(3))
    assert rho > 0.9
    # projecting the rows again reproduces the scores
    proj = (cc.astype(np.float64) - res.mean) @ res.components.T
    np.testing.assert_allclose(proj, res.coords, atol=1e-6)


def test_sign_convention_is_stable_under_permutation():
    cc, _, _ = landscape_cc()
    perm = np.random.default_rng(4).permutation(len(cc))
    a = clpca(cc, 3).coords
    b = clpca(cc[np.ix_(perm, perm)], 3).coords
    np.testing.assert_allclose(b, a[perm], atol=1e-6)
    # skewness positive after orientation
    s, _, signs = orient_signs(-a)
    np.testing.assert_allclose(s, a, atol=1e-12)
    assert np.all(signs == -1)


def test_other_embeddings_separate_contaminants_and_are_deterministic():
    cc, t, label = landscape_cc(n_family=45, n_other=15)
    d = cc_distance(cc)
    assert np.all(d >= 0) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    for name, fn in (("isomap", lambda: isomap_embedding(d, 3, 8)),
                     ("spectral", lambda: spectral_embedding(d, 3, seed=1)),
                     ("tsne", lambda: tsne_embedding(d, 2, perplexity=10, seed=1, max_iter=300))):
        x = fn()
        assert x.shape[0] == 60 and np.all(np.isfinite(x)), name
        if name != "isomap":  # seeded methods: same seed, same result
            np.testing.assert_allclose(fn(), x, err_msg=name)
        # nearest neighbours (in the embedding) of contaminants are contaminants
        dist = ((x[:, None] - x[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        nn = dist.argmin(1)
        assert (label[nn] == label).mean() > 0.95, name


def test_auto_cluster_finds_groups_with_good_silhouette():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [4, 0, 0], [0, 4, 1]], float)
    x = np.vstack([c + rng.normal(scale=0.5, size=(n, 3)) for c, n in zip(centres, (50, 30, 20))])
    truth = np.repeat([0, 1, 2], (50, 30, 20))
    res = auto_cluster(x, max_k=6, seed=0)
    assert res.k == 3
    assert res.silhouette > 0.5
    # labels ordered by size: the 50-group is cluster 0
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, res.labels) > 0.95
    assert np.bincount(res.labels)[0] == max(np.bincount(res.labels))
    assert set(res.bic) == set(range(1, 7))
    # one blob: BIC prefers 1 cluster, silhouette undefined
    one = auto_cluster(rng.normal(size=(80, 3)), max_k=4)
    assert one.k == 1 and np.isnan(one.silhouette)


def test_procrustes_recovers_rotated_scaled_landscape():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # includes reflections
    b = 0.3 * a @ q + np.array([1.0, -2.0, 0.5])
    aligned, rot, rmsd, rel = procrustes_align(a, b)
    np.testing.assert_allclose(aligned, a, atol=1e-9)
    assert rmsd < 1e-9 and rel < 1e-9
    # unrelated landscapes stay far apart
    _, _, _, rel2 = procrustes_align(a, rng.normal(size=(50, 3)))
    assert rel2 > 0.7
    with pytest.raises(ValueError):
        procrustes_align(a, a[:10])


def test_cc_matrix_of_two_objects_clusters_them():
    """End to end on common lines: slices of two objects form two clusters."""
    from scipy.spatial.transform import Rotation

    from test_commonlines import lines_of, make_object, slices

    from spicompute.landscape.commonlines import cc_matrix

    rng = np.random.default_rng(21)
    imgs = np.concatenate([slices(make_object(rng), Rotation.random(25, random_state=s))
                           for s in (1, 2)])
    cc = cc_matrix(lines_of(imgs, n_lines=90)[0]).cc
    res = clpca(cc, 3)
    truth = np.repeat([0, 1], 25)
    clus = auto_cluster(res.coords, max_k=4)
    from sklearn.metrics import adjusted_rand_score

    assert clus.k >= 2
    assert adjusted_rand_score(truth, clus.labels) > 0.8
