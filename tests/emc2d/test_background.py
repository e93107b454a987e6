"""Background per pixel estimated from hits, and the EMC background term."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from spicompute.emc2d.background import estimate_background
from spicompute.emc2d.steps import (LEVELS_PER_OCTAVE, Shard, build_rotation_grid, fluence_level,
                              level_scale, m_step, shard_step)
from tests.conftest import small_simulation_params
from tests.emc2d.test_emc2d_data import make_detector, make_frames

GEOMETRIES = {"33 binned": dict(detector_size=33, binning=4),
              "51 off-centre": dict(detector_size=51, binning=2, beam_center_px=[20, 28])}


def _simulate(background: float, geometry: dict, n_frames: int = 1200, seed: int = 5):
    from spicompute.simulation.simulate import SimulationParams, simulate

    p = SimulationParams.from_dict(small_simulation_params(
        n_frames=n_frames, photons_mean=400, background_photons=background, seed=seed,
        **geometry))
    return simulate(p, progress=False)


def _estimate(frames):
    det = frames.detector
    m = det.mask
    return estimate_background(frames.counts[:, m], np.linalg.norm(det.q_perp, axis=1)[m],
                               det.correction()[m])


@pytest.mark.parametrize("geometry", GEOMETRIES.values(), ids=GEOMETRIES.keys())
@pytest.mark.parametrize("background", [0.0, 60.0])
def test_background_estimate_follows_the_truth(geometry, background):
    frames, truth = _simulate(background, geometry)
    est = _estimate(frames)
    true = float(np.mean(truth.background_photons))
    # within 15 % of the truth, or 4 % of the photons of a frame (400 particle photons on average)
    photons = float(frames.counts.sum()) / frames.n_frames
    assert abs(est.photons_per_frame - true) < max(0.04 * photons, 0.15 * true), \
        (est.photons_per_frame, true)
    assert est.per_pixel.shape == (int(frames.detector.mask.sum()),)
    assert np.all(est.per_pixel >= 0)
    d = est.to_dict()
    assert d["background_photons_per_frame"] == pytest.approx(est.photons_per_frame)
    assert 0 <= d["background_share"] < 1


def test_background_estimate_needs_frames_and_spreads_by_efficiency(rng):
    n, p = 30, 200
    counts = sp.random(n, p, density=0.1, random_state=1, format="csr") * 5
    radius = np.linspace(0.1, 1.0, p)
    est = estimate_background(counts, radius, np.ones(p))
    assert est.photons_per_frame == 0.0           # too few frames: no estimate, not a guess
    # a pure flat background and a fluence-scaled particle term: the intercept is the background
    n = 3000
    phi = rng.uniform(0.3, 1.0, n)
    efficiency = np.where(np.arange(p) % 2 == 0, 1.0, 0.5)
    particle = 400 * np.exp(-radius / 0.08)
    particle /= particle.sum() / 400
    flat = 30.0 * efficiency / efficiency.sum()
    lam = phi[:, None] * particle[None] + flat[None]
    counts = sp.csr_matrix(rng.poisson(lam).astype(np.float64))
    est = estimate_background(counts, radius, efficiency)
    assert est.photons_per_frame == pytest.approx(30.0, rel=0.15)
    outer = radius > 0.5   # spread in proportion to efficiency
    even = outer & (np.arange(p) % 2 == 0)
    odd = outer & (np.arange(p) % 2 == 1)
    assert est.per_pixel[even].mean() / est.per_pixel[odd].mean() == pytest.approx(2.0, rel=0.1)


def test_no_background_where_the_inner_bins_do_not_predict_the_outer_ones():
    """Arbitrary templates (no forward-scattering peak) and a narrow fluence range: the
    zero-fluence extrapolation is noise, so no background is claimed (a wrong one would
    eat the models)."""
    fs, *_ = make_frames(n_frames=300, photons=500.0, seed=1)
    est = _estimate(fs)
    assert est.photons_per_frame == 0.0


def _small_problem(rng, n=120, k=3, n_rot=8):
    det = make_detector(17)
    grid = build_rotation_grid(det, n_rot)
    models = rng.gamma(2.0, 1.0, size=(k, grid.n_grid)).astype(np.float32) * 0.2
    counts = sp.csr_matrix(rng.poisson(0.4, size=(n, grid.n_pix)).astype(np.float32))
    return det, grid, models, counts


def test_background_term_sparse_kernel_equals_dense_reference(rng):
    det, grid, models, counts = _small_problem(rng)
    n = counts.shape[0]
    # scales exactly on fluence levels: both engines then evaluate the same likelihood
    phi = np.array([level_scale(v) for v in rng.integers(-6, 3, n)])
    beta = np.full(n, 0.5)
    background = rng.uniform(0.01, 0.05, grid.n_pix)
    shard = Shard.from_counts(counts)
    a = shard_step(shard, grid, models, phi, beta, True, engine="sparse", background=background)
    b = shard_step(shard, grid, models, phi, beta, True, engine="dense", background=background)
    assert np.allclose(a.phi, b.phi, rtol=1e-4)
    assert np.array_equal(a.best, b.best)
    assert np.allclose(a.num, b.num, rtol=1e-3, atol=1e-4)
    assert a.loglik == pytest.approx(b.loglik, rel=1e-4)
    # the background changes the posteriors and removes its photons from the numerator
    c = shard_step(shard, grid, models, phi, beta, True, engine="dense")
    assert not np.allclose(c.phi, b.phi)
    assert b.num.sum() < c.num.sum()


def test_fluence_levels_are_within_half_a_level():
    phi = np.geomspace(0.05, 20, 500)
    rel = np.array([level_scale(v) for v in fluence_level(phi)]) / phi
    assert np.all(np.abs(np.log2(rel)) <= 0.5 / LEVELS_PER_OCTAVE + 1e-12)
    half = 0.5 / LEVELS_PER_OCTAVE
    assert rel.max() <= 2 ** half + 1e-12 and rel.min() >= 2 ** -half - 1e-12


def test_background_term_recovers_models_with_background(rng):
    """Frames = phi * (model at a random rotation) + flat background: with the background
    term the M-step returns the particle model, without it the model carries the offset."""
    det, grid, _, _ = _small_problem(rng)
    yy, xx = np.mgrid[0:grid.size, 0:grid.size] - grid.size // 2
    truth = (20.0 * np.exp(-(xx ** 2 + 2 * yy ** 2) / 8.0)).reshape(1, -1).astype(np.float32)
    n = 4000
    rot = rng.integers(0, grid.n_rot, n)
    phi = np.exp(rng.uniform(np.log(0.3), 0.0, n))
    phi /= phi.mean()
    W = np.asarray(grid.S @ truth.T).reshape(grid.n_pix, grid.n_rot)  # (P, R)
    background = np.full(grid.n_pix, 0.3)
    lam = phi[:, None] * W[:, rot].T + background[None]
    counts = sp.csr_matrix(rng.poisson(lam).astype(np.float32))
    beta = np.ones(n)
    shard = Shard.from_counts(counts)
    with_bg = m_step(grid, shard_step(shard, grid, truth, phi, beta, False, background=background))[0]
    without = m_step(grid, shard_step(shard, grid, truth, phi, beta, False))[0]
    seen = grid.colsum.sum(0) > 0.5 * grid.colsum.sum(0).max()
    corner = seen & (truth[0] < 0.05)              # where the particle has no signal
    assert abs(with_bg[0, corner].mean()) < 0.05
    assert without[0, corner].mean() > 0.2
    # the particle's photons are kept (rotational blur moves them, it does not remove them)
    assert with_bg[0, seen].sum() == pytest.approx(truth[0, seen].sum(), rel=0.1)
    assert without[0, seen].sum() > 1.1 * truth[0, seen].sum()


def test_background_likelihood_does_not_depend_on_the_grouping_of_blocks(rng, monkeypatch):
    """Blocks are grouped so that each fluence level's log-model matrix is computed once per
    group: the numbers must not depend on how many groups there are."""
    import spicompute.emc2d.steps as emc

    det, grid, models, counts = _small_problem(rng, n=300)
    n = counts.shape[0]
    phi = np.exp(rng.uniform(np.log(0.3), 0.0, n))
    beta = np.full(n, 0.5)
    background = rng.uniform(0.01, 0.05, grid.n_pix)
    shard = Shard.from_counts(counts, block_frames=40)
    one = shard_step(shard, grid, models, phi, beta, True, background=background)
    monkeypatch.setattr(emc, "GROUP_BYTES", 1)            # every block its own group
    many = shard_step(shard, grid, models, phi, beta, True, background=background)
    assert np.array_equal(one.best, many.best)
    assert np.array_equal(one.phi, many.phi)
    assert np.array_equal(one.num, many.num)


@pytest.mark.parametrize("slab", [1 << 18, 100, 7])
def test_slab_wise_log_equals_the_whole_array_expression_bitwise(rng, monkeypatch, slab):
    """offset_log computes log(max(W + alpha b, floor)) slab by slab (for speed); whatever the slab
    size, rows chosen or written in place, every element is the whole-array expression's."""
    import torch

    from spicompute.emc2d import steps

    monkeypatch.setattr(steps, "SLAB_ELEMENTS", slab)
    W = torch.from_numpy(rng.gamma(0.5, 1e-3, size=(5, 301, 12)).astype(np.float32))
    W[0, :40] = 0.0                                              # below the floor without background
    b = torch.from_numpy(rng.uniform(0, 2e-4, 301).astype(np.float32))
    floor, alpha = 1e-5, 1 / 2 ** 0.5
    whole = torch.add(W, b.reshape(1, -1, 1), alpha=alpha).clamp_(min=floor).log_()
    assert torch.equal(steps.offset_log(W, floor, alpha, b), whole)
    plain = W.clone().clamp_(min=floor).log_()
    assert torch.equal(steps.offset_log(W, floor), plain)
    out = torch.full_like(W, 7.0)
    steps.offset_log(W, floor, alpha, b, index=[1, 3], out=out)     # only the rows asked for
    assert torch.equal(out[[1, 3]], whole[[1, 3]]) and (out[[0, 2, 4]] == 7.0).all()
    inplace = W.clone()
    steps.offset_log(inplace, floor, index=np.array([0, 4]), out=inplace)
    assert torch.equal(inplace[[0, 4]], plain[[0, 4]]) and torch.equal(inplace[1:4], W[1:4])


def _two_sizes(rng, n=10000, p=400, background=40.0):
    """Frames of two particle sizes (class 0: larger, more forward scattering, less at mid q)
    at random fluence, plus a background decaying with q: (counts, radius, efficiency, classes,
    true background per pixel)."""
    radius = np.linspace(0.02, 1.0, p)
    efficiency = 1.0 - 0.4 * radius ** 2
    profiles = np.stack([np.exp(-(radius / s) ** 2) + 0.02 * np.exp(-radius / t)
                         for s, t in ((0.1, 0.1), (0.25, 0.35))])
    profiles *= 600.0 / profiles.sum(axis=1, keepdims=True)
    classes = rng.integers(0, 2, n)
    phi = rng.uniform(0.3, 1.5, n)
    shape = efficiency * (0.5 + 0.5 * np.exp(-radius / 0.3))
    true = background * shape / shape.sum()
    lam = phi[:, None] * profiles[classes] * efficiency + true[None]
    return sp.csr_matrix(rng.poisson(lam).astype(np.float64)), radius, efficiency, classes, true


def _per_bin(per_pixel, est):
    return np.bincount(est.pixel_bin, per_pixel, len(est.per_bin))


def test_background_refined_within_classes_is_right_where_the_pooled_estimate_is_not(rng):
    """Across two sizes the inner bins predict the outer ones only on average, so the pooled
    intercept is off bin by bin; within each class the same regression is linear and the
    refined estimate follows the truth wherever the background is a fair share of the counts."""
    from spicompute.emc2d.background import TRUSTED_SHARE, bin_matrix, refine_background

    counts, radius, efficiency, classes, true = _two_sizes(rng)
    pooled = estimate_background(counts, radius, efficiency)
    per_frame = np.asarray((counts @ bin_matrix(pooled.pixel_bin, len(pooled.per_bin))).todense())
    refined = refine_background(per_frame, classes, pooled)
    truth_bin = _per_bin(true, pooled)
    fair = truth_bin >= TRUSTED_SHARE * pooled.signal_per_bin
    assert fair.sum() >= 5
    err_pooled = np.abs(pooled.per_bin[fair] / truth_bin[fair] - 1)
    err_refined = np.abs(refined.per_bin[fair] / truth_bin[fair] - 1)
    assert err_pooled.max() > 0.15, err_pooled         # the pooled regression's bias (the old default)
    assert err_refined.max() < 0.1, err_refined
    assert refined.photons_per_frame == pytest.approx(true.sum(), rel=0.1)
    # spread per pixel as the efficiency, never negative, on the prior's bins
    assert np.all(refined.per_pixel >= 0) and np.array_equal(refined.pixel_bin, pooled.pixel_bin)
    # negative control: classes that are not the shapes (random labels) bring back the pooled bias
    shuffled = refine_background(per_frame, rng.permutation(classes), pooled)
    assert np.abs(shuffled.per_bin[fair] / truth_bin[fair] - 1).max() > 0.3


def test_background_refinement_falls_back_to_the_prior(rng):
    from spicompute.emc2d.background import MIN_CLASS_FRAMES, bin_matrix, refine_background

    counts, radius, efficiency, classes, _ = _two_sizes(rng, n=3000)
    pooled = estimate_background(counts, radius, efficiency)
    per_frame = np.asarray((counts @ bin_matrix(pooled.pixel_bin, len(pooled.per_bin))).todense())
    # every class smaller than MIN_CLASS_FRAMES: nothing to pool, the prior stands
    tiny = np.arange(len(classes)) // (MIN_CLASS_FRAMES - 1)
    assert refine_background(per_frame, tiny, pooled) is pooled
    # frames without a class (-1) are left out, not pooled as a class of their own
    none = np.full(len(classes), -1)
    assert refine_background(per_frame, none, pooled) is pooled
    # no background claimed: nothing to refine
    zero = estimate_background(counts[:20], radius, efficiency)
    assert refine_background(per_frame[:20], classes[:20], zero) is zero


@pytest.fixture(scope="module", params=[(GEOMETRIES["33 binned"], 400), (GEOMETRIES["51 off-centre"], 400),
                                        (GEOMETRIES["33 binned"], 1500), (GEOMETRIES["51 off-centre"], 1500)],
                ids=["33-400ph", "51-400ph", "33-1500ph", "51-1500ph"])
def background_set(request):
    """A simulated set with 60 background photons per frame on two geometries, two photon levels."""
    from spicompute.simulation.simulate import SimulationParams, simulate

    geometry, photons = request.param
    p = SimulationParams.from_dict(small_simulation_params(n_frames=4000, photons_mean=photons,
                                                           background_photons=60, seed=5, **geometry))
    return simulate(p, progress=False), p


def _bin_errors(frames, truth, p, result):
    """Per radial bin where the true background is >= TRUSTED_SHARE of the counts: estimate / truth - 1."""
    from spicompute.emc2d.background import TRUSTED_SHARE, pixel_bins
    from spicompute.simulation.simulate import background_profile

    det, pix = frames.detector, result.grid.pixels
    true = float(np.mean(truth.background_photons)) * background_profile(
        det, p.background_flat_fraction, p.background_q_nm)[pix]
    radius = np.linalg.norm(det.q_perp[pix], axis=1)
    bins = pixel_bins(radius, np.linspace(radius.min(), radius.max() * (1 + 1e-9), 13))
    true_bin = np.bincount(bins, true, 12)
    counts = np.bincount(bins, np.asarray(frames.counts[:, pix].mean(axis=0)).ravel(), 12)
    fair = true_bin >= TRUSTED_SHARE * counts
    assert fair.sum() >= 6
    return np.bincount(bins, result.backgrounds[0], 12)[fair] / true_bin[fair] - 1


def test_emc_refines_the_background_within_its_classes(background_set):
    """Through 2D EMC (the classes it found, not the truth's): the refined background is nearer
    the simulator's, bin by bin, than the data-set estimate it starts from."""
    from spicompute.emc2d.run import EMCConfig, run_bootstrap

    (frames, truth), p = background_set
    cfg = dict(n_models=8, n_rot=16, n_runs=1, max_iter=10, min_iter=10, device="cpu")
    pooled = run_bootstrap(frames, EMCConfig(**cfg, background="auto"))
    refined = run_bootstrap(frames, EMCConfig(**cfg, background="refined"))
    history = refined.histories[0]
    at = [r["iteration"] for r in history if "background_refined" in r]
    first_final = next(r["iteration"] for r in history if r["beta_final"])
    assert at == [first_final] and not any("background_refined" in r for r in pooled.histories[0])
    assert history[at[0] - 1]["background_refined"] == pytest.approx(refined.backgrounds[0].sum())
    err_pooled = np.abs(_bin_errors(frames, truth, p, pooled))
    err_refined = np.abs(_bin_errors(frames, truth, p, refined))
    assert err_refined.max() < err_pooled.max() - 0.05, (err_refined, err_pooled)
    assert err_refined.max() < 0.7


@pytest.mark.parametrize("kill_at", ["before", "at"])
def test_refined_run_resumes_to_the_same_bits(tmp_path, kill_at):
    """A run killed before or right after its refinement resumes to the uninterrupted result
    (the refined background is in the checkpoint, and is refined once); streamed from the file
    the frames give the same bits as in memory."""
    from spicompute.emc2d.run import EMCConfig, run_bootstrap
    from spicompute.io.frames import write_frames
    from spicompute.io.stream import FrameFile

    frames, _ = _simulate(60.0, GEOMETRIES["51 off-centre"], n_frames=1500)
    cfg = EMCConfig(n_models=6, n_rot=16, n_runs=1, max_iter=8, min_iter=8, device="cpu", background="refined")
    full = run_bootstrap(frames, cfg)
    at = next(r["iteration"] for r in full.histories[0] if "background_refined" in r)
    stop = at - 1 if kill_at == "before" else at

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["iteration"] == stop and not rec.get("resumed"):
            raise Killed

    with pytest.raises(Killed):
        run_bootstrap(frames, cfg, checkpoint_dir=tmp_path / "ck", on_iteration=kill)
    resumed = run_bootstrap(frames, cfg, checkpoint_dir=tmp_path / "ck")
    assert np.array_equal(resumed.models, full.models)
    assert np.array_equal(resumed.backgrounds[0], full.backgrounds[0])
    assert [r["iteration"] for r in resumed.histories[0] if "background_refined" in r] == [at]
    if kill_at == "at":
        path = tmp_path / "frames.h5"
        write_frames(path, frames, layout="sparse")
        streamed = run_bootstrap(FrameFile(path), EMCConfig(**{**cfg.__dict__, "stream": True}))
        assert np.array_equal(streamed.models, full.models)
        assert np.array_equal(streamed.backgrounds[0], full.backgrounds[0])
