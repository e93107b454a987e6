"""The simulator: photon statistics, masks, fluence, truth, determinism."""

import numpy as np
import pytest

from spicompute.errors import ParameterError
from spicompute.simulate import SimulationParams, poisson_sparse, simulate
from tests.conftest import small_simulation_params


def test_mean_photons_per_frame_within_2_percent(small_simulation):
    frames, _, p = small_simulation
    assert frames.photons_per_frame().mean() == pytest.approx(p.photons_mean, rel=0.02)


def test_masked_pixels_are_always_zero(small_simulation):
    frames, _, _ = small_simulation
    masked = ~frames.detector.mask
    assert masked.sum() > 0
    assert frames.counts[:, masked].nnz == 0


def test_poisson_variance_equals_mean(rng):
    lam = rng.uniform(0.05, 4.0, 400).astype(np.float32)
    counts = poisson_sparse(np.tile(lam, (4000, 1)), rng).toarray()
    np.testing.assert_allclose(counts.mean(0), lam, rtol=0.08, atol=0.01)
    ratio = counts.var(0) / counts.mean(0)
    assert abs(np.median(ratio) - 1) < 0.03
    assert np.all((ratio > 0.8) & (ratio < 1.2))


def test_zero_expectation_gives_zero_counts(rng):
    lam = np.zeros((10, 50), np.float32)
    lam[:, ::2] = 2.0
    counts = poisson_sparse(lam, rng).toarray()
    assert counts[:, 1::2].sum() == 0 and counts[:, ::2].sum() > 0


def test_truth_records_classes_fluence_and_orientations(small_simulation):
    frames, truth, p = small_simulation
    assert set(truth.class_name) == {"cube", "melt", "sphere", "dimer", "rod", "aggregate"}
    assert np.all(truth.fluence >= p.fluence_min) and np.all(truth.fluence <= 1)
    np.testing.assert_allclose(np.linalg.norm(truth.quaternion, axis=1), 1.0)
    melt = truth.class_name == "melt"
    assert np.all((truth.melt_t[melt] > 0) & (truth.melt_t[melt] < 1))
    assert np.all(np.isnan(truth.melt_t[truth.class_name == "rod"]))
    # photons follow the fluence: brighter frames carry more photons
    photons = frames.photons_per_frame()
    spheres = truth.class_name == "sphere"
    assert np.corrcoef(truth.fluence[spheres], photons[spheres])[0, 1] > 0.5


def test_cubes_streak_and_spheres_ring():
    """Cube patterns are anisotropic (streaks); sphere patterns are rings."""
    p = SimulationParams.from_dict(small_simulation_params(
        n_frames=80, photons_mean=20000, fractions={"cube": 1, "sphere": 1}))
    frames, truth = simulate(p, progress=False)
    det = frames.detector
    qx, qy = det.q[:, 0], det.q[:, 1]
    ring = (np.hypot(qx, qy) > 0.1) & (np.hypot(qx, qy) < 0.35) & det.mask
    angle = np.arctan2(qy, qx)[ring]
    bins = np.digitize(angle, np.linspace(-np.pi, np.pi, 13))

    def anisotropy(kind):
        rows = truth.class_name == kind
        dense = frames.dense(np.nonzero(rows)[0])[:, ring].astype(float)
        sector = np.stack([dense[:, bins == b].mean(1) for b in range(1, 13)], 1)
        return np.median(sector.std(1) / sector.mean(1))

    assert anisotropy("cube") > 1.3 * anisotropy("sphere")


def test_simulation_is_deterministic():
    p = SimulationParams.from_dict(small_simulation_params(n_frames=40))
    a, ta = simulate(p, progress=False)
    b, tb = simulate(p, progress=False)
    assert (a.counts != b.counts).nnz == 0
    np.testing.assert_array_equal(ta.quaternion, tb.quaternion)


@pytest.mark.parametrize("key,value", [("n_frames", 0), ("photon_energy_kev", -6.0),
                                       ("distance_mm", 0), ("fluence_min", 1.5),
                                       ("photons_mean", float("nan")), ("bogus", 1)])
def test_absurd_parameters_are_rejected(key, value):
    with pytest.raises(ParameterError, match=f"simulate.{key}"):
        SimulationParams.from_dict({key: value})


def test_too_small_volume_grid_is_rejected():
    with pytest.raises(ParameterError, match="volume_size"):
        simulate(SimulationParams.from_dict(dict(n_frames=2, volume_size=16)), progress=False)


def test_aggregate_forward_scattering_is_total_volume_squared_and_anisotropic():
    from spicompute.simulate import aggregate_intensity

    q = np.zeros((1, 3))
    a = 42.0
    rng = np.random.default_rng(5)
    i0 = aggregate_intensity(q, a, rng)[0]
    rng = np.random.default_rng(5)
    n = int(rng.integers(3, 7))
    radii = rng.uniform(0.25, 0.45, n) * a
    assert i0 == pytest.approx((4 / 3 * np.pi * (radii**3).sum()) ** 2, rel=1e-9)
    # an irregular cluster scatters differently along different directions
    shell = 0.25 * np.eye(3)
    values = aggregate_intensity(shell, a, np.random.default_rng(5))
    assert values.max() > 1.2 * values.min()
