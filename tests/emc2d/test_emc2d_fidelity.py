"""2D EMC fidelity: unbiased M-step under a strong pixel correction, beta reaching its final
value before any convergence stop, re-seeded empty models, relative 'observed' threshold."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp

from spicompute.emc2d.steps import Shard, build_rotation_grid, m_step, shard_step
from spicompute.emc2d.run import (EMCConfig, beta_is_final, beta_schedule, initial_models,
                                  reseed_empty_models, run_bootstrap, run_emc, usable_counts)
from tests.emc2d.test_emc2d_data import make_detector, make_frames


def test_m_step_is_unbiased_by_the_pixel_correction():
    det = make_detector(33)
    xy = det.q_perp / det.dq_nm
    strong = 1.0 - 0.35 * (xy[:, 0] / np.abs(xy[:, 0]).max()) ** 2  # +-35 % across the detector
    det = dataclasses.replace(det, solid_angle=strong, polarization=np.ones(det.n_pixels))
    grid = build_rotation_grid(det, 12)
    corr = grid.corr
    assert corr.min() < 0.7
    # noise-free frames of a flat object: expected counts A * c_p at every rotation
    n = 40
    counts = sp.csr_matrix(np.tile(500.0 * corr, (n, 1)).astype(np.float32))
    models = np.ones((1, grid.n_grid), np.float32) * 500.0
    total = shard_step(Shard.from_counts(counts), grid, models, np.ones(n), np.ones(n), False, "cpu")
    new, weight = m_step(grid, total)
    seen = weight[0] > 0
    # the model stays flat (the old numerator carried c_p and dipped where c is small)
    assert np.std(new[0][seen]) / np.mean(new[0][seen]) < 0.02
    np.testing.assert_allclose(np.median(new[0][seen]), 500.0, rtol=0.01)


def test_observed_is_relative_not_any_positive_weight():
    fs = make_frames(n_frames=60, photons=400.0, size=33, seed=3)[0]
    res = run_bootstrap(fs, EMCConfig(n_models=2, n_rot=12, n_runs=1, subset_fraction=1.0, max_iter=3,
                                      min_iter=3, device="cpu"))
    w = res.weight.reshape(2, -1)
    positive = w[w > 0]
    assert positive.min() >= 1e-4 * w.max(axis=1).min() * 0.999


def test_beta_ramp_reaches_final_before_the_stop_can_fire():
    cfg = EMCConfig(max_iter=20, beta_ramp=0.6)
    beta0 = np.array([0.01, 0.05, 0.5])
    betas = np.array([beta_schedule(beta0, it, cfg) for it in range(20)])
    assert np.all(np.diff(betas, axis=0) >= -1e-12)            # monotone
    np.testing.assert_allclose(betas[0], beta0)
    final = [beta_is_final(it, cfg, beta0) for it in range(20)]
    assert final.index(True) == 11 and all(final[11:])        # from iteration 12 of 20 on
    np.testing.assert_allclose(betas[-1], 1.0)
    # Dragonfly's rule as an option: x2 every 5 iterations, capped
    dfly = EMCConfig(max_iter=20, beta_schedule="dragonfly")
    assert beta_schedule(beta0, 12, dfly)[0] == 0.04
    # a run whose models converge early still iterates until beta is final
    fs = make_frames(n_frames=120, photons=500.0, size=33, seed=2)[0]
    # (background auto: a refined background, re-fitted at the first final beta, moves the models
    # once more and that run stops one iteration later)
    res = run_bootstrap(fs, EMCConfig(n_models=3, n_rot=12, n_runs=1, subset_fraction=1.0, max_iter=10,
                                      min_iter=1, tol=10.0, beta=0.05, device="cpu", background="auto"))
    hist = res.histories[0]
    assert hist[-1]["beta_final"] and not any(h["beta_final"] for h in hist[:-1])
    assert abs(hist[-1]["beta_mean"] - 1.0) < 1e-9


def test_empty_models_are_reseeded_from_the_fullest():
    rng = np.random.default_rng(0)
    models = np.vstack([np.full(50, 3.0), np.zeros(50), np.full(50, 7.0), np.zeros(50)])
    occ = np.array([40.0, 0.2, 90.0, 0.0])
    done = reseed_empty_models(models, occ, rng)
    assert done == [1, 3]
    assert abs(models[1].mean() - 7.0) < 0.2 and abs(models[3].mean() - 3.0) < 0.2  # fullest first
    assert not np.array_equal(models[1], models[2])                                  # perturbed copies
    # a model that starts (or falls) empty is brought back into play; without re-seeding it stays dead
    fs = make_frames(n_frames=150, photons=500.0, n_templates=2, size=33, seed=4)[0]
    grid = build_rotation_grid(fs.detector, 12)
    counts, photons = usable_counts(fs, grid)
    init = initial_models(grid, counts, photons, 3, np.random.default_rng(0))
    init[1] = 0.0
    occupancy = {}
    for reseed in (True, False):
        cfg = EMCConfig(n_models=3, n_rot=12, max_iter=10, min_iter=10, device="cpu", reseed_empty=reseed)
        state = run_emc(counts, grid, cfg, init)
        occupancy[reseed] = state.occupancy
        if reseed:
            assert state.history[0]["reseeded"] == 1
    assert occupancy[False][1] < 1.0 and occupancy[True][1] >= 5.0
