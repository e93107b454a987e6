"""Is a CLPCA axis structure or noise: reproducibility across disjoint run halves (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

from spicompute.landscape.commonlines import cc_matrix
from spicompute.landscape.embedding import clpca
from spicompute.landscape.stability import component_stability, split_halves


def structured_cc(seed: int, m: int = 240):
    """A CC matrix with two real axes (a melt-like t, a size-like s) and shot noise.

    cc_ij = 0.6 + 0.25 t_i t_j + 0.12 s_i s_j + symmetric noise (sd 0.03); the
    third principal component has nothing but noise.  Returns (cc, runs, t, s).
    """
    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, m)
    s = rng.uniform(-1, 1, m)
    noise = rng.normal(0, 0.03, (m, m))
    cc = 0.6 + 0.25 * np.outer(t, t) + 0.12 * np.outer(s, s) + (noise + noise.T) / np.sqrt(2)
    np.fill_diagonal(cc, 1.0)
    return cc, rng.integers(0, 6, m), t, s


@pytest.mark.parametrize("seed", [0, 1])
def test_shape_axes_stable_noise_axis_flagged(seed):
    cc, runs, t, s = structured_cc(seed)
    pcs = clpca(cc, 3).coords
    assert abs(np.corrcoef(pcs[:, 0], t)[0, 1]) > 0.95 and abs(np.corrcoef(pcs[:, 1], s)[0, 1]) > 0.9
    res = component_stability(cc, np.ones(len(cc), bool), pcs, runs)
    assert res.split == "runs"
    assert res.stability[:2].min() > 0.9 and not res.flagged[:2].any()
    assert res.flagged[2], res.as_dict()  # the third axis is shot noise


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_null_landscape_of_structureless_averages_flags_every_axis(seed):
    """Averages with no shape in common (their polar lines shuffled into noise) through the real CC code."""
    rng = np.random.default_rng(seed)
    lines = rng.poisson(20.0, (150, 36, 12)).astype(np.float32)
    cc = cc_matrix(lines, block=50).cc
    pcs = clpca(cc, 3).coords
    res = component_stability(cc, np.ones(len(cc), bool), pcs, rng.integers(0, 4, len(cc)))
    assert res.flagged.all(), res.as_dict()


def test_unusable_averages_ignored_and_single_run_split_by_average():
    cc, runs, t, s = structured_cc(0, m=200)
    usable = np.ones(200, bool)
    usable[::7] = False
    cc_broken = cc.copy()
    cc_broken[~usable] = np.random.default_rng(5).normal(0, 5, (int((~usable).sum()), 200))
    pcs = np.zeros((200, 3))
    pcs[usable] = clpca(cc[np.ix_(usable, usable)], 3).coords
    res = component_stability(cc_broken, usable, pcs, None)
    assert res.split == "averages" and sum(res.n_half) == usable.sum()
    assert not res.flagged[:2].any()
    half, how = split_halves(np.array([3, 3, 3]), 3)
    assert how == "averages" and half.tolist() == [True, False, True]
    half, how = split_halves(np.array([0, 1, 2, 3, 0]), 5)
    assert how == "runs" and half.tolist() == [True, False, True, False, True]


def test_too_few_averages_per_half_is_an_error():
    cc, runs, _, _ = structured_cc(0, m=10)
    with pytest.raises(ValueError, match="each half"):
        component_stability(cc, np.ones(10, bool), clpca(cc, 3).coords, runs)
