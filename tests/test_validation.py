"""The landscape-vs-nuisance check used by the low-photon test and benchmark."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from spicompute.validation import nuisance_excess


def _landscape(m=120, seed=0):
    rng = np.random.default_rng(seed)
    melt = rng.uniform(0, 1, m)
    contaminant = (rng.random(m) < 0.15).astype(float)
    photons = rng.normal(400, 40, m)
    occupancy = rng.integers(40, 200, m).astype(float)
    coords = np.column_stack([
        melt + 0.1 * rng.standard_normal(m),            # the melt axis
        (photons - 400) / 40 + 0.3 * rng.standard_normal(m),   # follows photons
        rng.standard_normal(m),                          # follows nothing
    ])
    return coords, melt, contaminant, photons, occupancy


def test_excess_separates_shape_nuisance_and_noise_axes():
    coords, melt, cont, photons, occ = _landscape()
    family = cont == 0
    res = nuisance_excess(coords, {"melt": melt, "contaminant": cont},
                          {"photons": photons, "occupancy": occ},
                          shape_mask={"melt": family}, n_boot=300)
    # point values are |rho| differences, computed like scipy's Spearman
    rho_melt = abs(spearmanr(coords[family, 0], melt[family])[0])
    assert res.excess[0] < -0.7 and res.excess[0] <= -rho_melt + 0.25
    assert not res.significant[0] and res.p_positive[0] == 0
    assert res.excess[1] > 0.6 and res.significant[1] and res.p_positive[1] == 1
    assert not res.significant[2] and 0 < res.p_positive[2] < 1 and abs(res.excess[2]) < 0.3
    assert np.all(res.lower <= res.excess + 1e-12) and np.all(res.excess <= res.upper + 1e-12)


def test_shape_mask_restricts_the_melt_correlation():
    coords, melt, cont, photons, occ = _landscape(seed=1)
    garbage = melt.copy()
    garbage[cont == 1] = 10 + coords[cont == 1, 1]   # undefined outside the family
    masked = nuisance_excess(coords, {"melt": garbage}, {"photons": photons},
                             shape_mask={"melt": cont == 0}, n_boot=50)
    clean = nuisance_excess(coords[cont == 0], {"melt": melt[cont == 0]},
                            {"photons": photons[cont == 0]}, n_boot=50)
    unmasked = nuisance_excess(coords, {"melt": garbage}, {"photons": photons}, n_boot=50)
    # only the shape side is masked: the melt axis keeps its |rho| with melt
    assert masked.excess[0] < -0.7 and clean.excess[0] < -0.7
    assert unmasked.excess[0] > masked.excess[0] + 0.05


def test_resampling_is_seeded():
    coords, melt, cont, photons, occ = _landscape(seed=2)
    a = nuisance_excess(coords, {"melt": melt}, {"photons": photons}, n_boot=100, seed=5)
    b = nuisance_excess(coords, {"melt": melt}, {"photons": photons}, n_boot=100, seed=5)
    np.testing.assert_array_equal(a.lower, b.lower)
    np.testing.assert_array_equal(a.p_positive, b.p_positive)


def test_landscape_excess_reads_a_per_average_table():
    import pandas as pd

    from spicompute.validation import landscape_excess

    coords, melt, cont, photons, occ = _landscape(seed=3)
    size = 40 + coords[:, 2]                 # the null axis is really size
    members = np.where(np.arange(len(melt)) % 10 == 0, 3, 50)
    table = pd.DataFrame({"pc_1": coords[:, 0], "pc_2": coords[:, 1], "pc_3": coords[:, 2],
                          "melt_t": np.where(cont == 1, np.nan, melt), "contaminant": cont,
                          "size_nm": size, "members": members, "mean_photons": photons,
                          "n_frames": occ})
    res = landscape_excess(table, n_boot=100)
    family = (cont < 0.2) & (members >= 5)
    ref = nuisance_excess(coords, {"melt": np.nan_to_num(table["melt_t"].to_numpy()),
                                   "contaminant": cont, "size_nm": size},
                          {"mean_photons": photons, "n_frames": occ},
                          shape_mask={"melt": family}, n_boot=100)
    np.testing.assert_array_equal(res.excess, ref.excess)
    assert res.excess[2] == pytest.approx(-1 + max(abs(spearmanr(coords[:, 2], photons)[0]),
                                                   abs(spearmanr(coords[:, 2], occ)[0])))
