"""Common lines add information over a rotation-invariant radial-profile baseline.

Two random objects of the same size (same spherically averaged intensity
statistics), 15 slices each at random orientations.  A single slice's radial
profile depends on its orientation, so PCA of the 2D radial profiles mixes
the objects; the common-line CC matrix links slices of one object through
their shared lines and separates them.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from spicompute.landscape.commonlines import cc_matrix
from spicompute.landscape.embedding import clpca

from test_commonlines import SIZE, beamstop_valid, lines_of, make_object, slices


def best_auc(labels: np.ndarray, coords: np.ndarray) -> float:
    """Best one-component separation (ROC AUC, orientation-free) of two labels."""
    return max(max(a, 1 - a) for a in (roc_auc_score(labels, coords[:, k]) for k in range(coords.shape[1])))


def radial_profiles(images: np.ndarray, valid: np.ndarray, r_min: int = 4) -> np.ndarray:
    """(N, L//2 - r_min) mean intensity per integer radius over the observed pixels."""
    c = SIZE // 2
    yy, xx = np.mgrid[:SIZE, :SIZE] - c
    r = np.hypot(yy, xx).round().astype(int)
    out = []
    for img, ok in zip(images, valid):
        tot = np.bincount(r[ok], weights=img[ok], minlength=c + 1)[:c]
        cnt = np.bincount(r[ok], minlength=c + 1)[:c]
        out.append(tot / np.maximum(cnt, 1))
    return np.asarray(out)[:, r_min:]


@pytest.mark.parametrize("seed", [0, 1])
def test_common_lines_separate_objects_the_radial_baseline_mixes(seed):
    rng = np.random.default_rng(seed)
    objects = [make_object(rng), make_object(rng)]
    images = np.concatenate([slices(o, Rotation.random(15, random_state=seed * 10 + i))
                             for i, o in enumerate(objects)])
    labels = np.repeat([0, 1], 15)
    valid = beamstop_valid(len(images))
    cl_auc = best_auc(labels, clpca(cc_matrix(lines_of(images, valid, n_lines=90)[0]).cc, 3).coords)
    prof = radial_profiles(images, valid)
    f = np.log(prof + 1e-6 * prof.max())
    rp_auc = best_auc(labels, PCA(3).fit_transform(f - f.mean(axis=0)))
    assert cl_auc >= 0.97, cl_auc
    assert cl_auc - rp_auc >= 0.05, (cl_auc, rp_auc)
