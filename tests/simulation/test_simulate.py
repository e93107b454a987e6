"""The simulator: photon statistics, masks, fluence, truth, determinism."""

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from spicompute.errors import ParameterError
from spicompute.shapes import (cube_amplitude, melt_half_size, sphere_amplitude,
                               superellipsoid_amplitude_grid, superellipsoid_exponent)
from spicompute.simulation.simulate import ShapeLibrary, SimulationParams, background_profile, background_sparse, build_detector, expected_patterns, make_library, poisson_sparse, simulate
from tests.conftest import small_simulation_params
from spicompute.orient.quaternions import random_quaternions, rotation_matrices


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


@pytest.mark.slow
def test_simulation_is_deterministic():
    p = SimulationParams.from_dict(small_simulation_params(n_frames=40))
    a, ta = simulate(p, progress=False)
    b, tb = simulate(p, progress=False)
    assert (a.counts != b.counts).nnz == 0
    np.testing.assert_array_equal(ta.quaternion, tb.quaternion)


@pytest.mark.parametrize("key,value", [("n_frames", 0), ("photon_energy_kev", -6.0),
                                       ("distance_mm", 0), ("fluence_min", 1.5),
                                       ("photons_mean", float("nan")), ("bogus", 1),
                                       ("background_photons", -1.0),
                                       ("background_flat_fraction", 1.5),
                                       ("beam_center_px", [10.0]),
                                       ("beam_center_px", [10.0, 500.0])])
def test_absurd_parameters_are_rejected(key, value):
    with pytest.raises(ParameterError, match=f"simulate.{key}"):
        SimulationParams.from_dict({key: value})


def test_truth_grid_box_is_at_least_twice_the_largest_particle():
    """A too small volume_size is raised so the truth volumes' real-space box
    2 pi / dq holds twice the largest particle (rod, dimer, aggregates, melt)."""
    p = SimulationParams.from_dict(small_simulation_params(volume_size=16))
    det = build_detector(p, np.random.default_rng(0))
    lib, size, dq = make_library(p, det)
    largest = max(lib.extents_nm().values())
    assert largest == pytest.approx(np.hypot(p.rod_length_nm, np.sqrt(2) * p.rod_width_nm))
    assert size > 16 and 2 * np.pi / dq >= 2 * largest
    assert (size // 2 - 1) * dq >= det.q_norm.max() * p.size_scale_range[1]
    # the melt amplitude grids: box >= 2 x the largest melt level (default oversampling 4)
    assert lib.melt_box_nm >= 2 * lib.melt_diameter[1:-1].max()
    assert lib.melt_box_nm == pytest.approx(2 * p.melt_grid_oversample
                                            * lib.melt_diameter[1:-1].max())


def test_aggregate_forward_scattering_is_total_volume_squared_and_anisotropic():
    from spicompute.simulation.simulate import aggregate_intensity

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


# --- direct evaluation of the shapes at s R^T q -------------------------------------------------

def _library(**overrides) -> ShapeLibrary:
    p = SimulationParams.from_dict(small_simulation_params(**overrides))
    return ShapeLibrary(p, q_extent_nm=0.8)


def _frames(kind, quats, t=None, scale=None, variant=None):
    n = len(quats)
    return dict(class_name=np.full(n, kind, dtype=object),
                melt_t=np.full(n, np.nan) if t is None else np.broadcast_to(t, (n,)).astype(float),
                quaternion=quats, size_scale=np.ones(n) if scale is None else np.asarray(scale),
                variant=np.zeros(n, int) if variant is None else np.asarray(variant))


def test_cube_zeros_at_2_pi_m_over_a_are_true_zeros(rng):
    """Noiseless slices at rotated orientations and sizes s: every pixel whose
    model-frame coordinate s R^T q lies on a face-normal zero 2 pi m / a (i.e.
    lab |q| component 2 pi m / (s a)) reads < 1e-6 I(0) (trilinear interpolation
    of an intensity grid filled the first one to 6e-3)."""
    lib = _library()
    a = lib.edge_nm
    quats = random_quaternions(6, rng)
    scale = np.array([1.0, 0.95, 1.08, 1.0, 1.02, 0.9])
    i0 = a**6
    for k, (quat, s) in enumerate(zip(quats, scale)):
        m = np.repeat(np.arange(1, 4), 50)
        q_model = np.stack([2 * np.pi * m / a, rng.uniform(-0.2, 0.2, m.size),
                            rng.uniform(-0.2, 0.2, m.size)], 1)
        q_lab = q_model @ rotation_matrices(quat[None])[0].T / s  # R (q_model / s)
        inten = expected_patterns(lib, q_lab, _frames("cube", quat[None], t=0.0, scale=[s]))[0]
        assert inten.max() / (s**6 * i0) < 1e-6
        # off the zeros (half-way to the next one) the same pixels are bright
        q_mid = q_model.copy()
        q_mid[:, 0] += np.pi / a
        lit = expected_patterns(lib, q_mid @ rotation_matrices(quat[None])[0].T / s,
                                _frames("cube", quat[None], t=0.0, scale=[s]))[0]
        assert np.median(lit) / (s**6 * i0) > 1e-5


def test_sphere_zeros_at_qr_4_493_and_7_725_in_the_simulated_pattern(rng):
    lib = _library()
    radius = lib.melt_half[-1]
    q = np.linspace(0.01, 0.5, 49001)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    s = 1.05
    inten = expected_patterns(lib, q[:, None] * direction,
                              _frames("sphere", random_quaternions(1, rng), t=1.0, scale=[s]))[0]
    idx = np.nonzero((inten[1:-1] < inten[:-2]) & (inten[1:-1] < inten[2:]))[0][:2] + 1
    np.testing.assert_allclose(q[idx] * s * radius, [4.4934, 7.7253], atol=2e-3)
    assert inten[idx].max() < 1e-8 * inten[0]
    np.testing.assert_allclose(inten, s**6 * sphere_amplitude(q[:, None] * s * direction,
                                                              radius) ** 2, rtol=1e-4,
                               atol=1e-9 * inten[0])


@pytest.mark.slow
def test_friedel_symmetry_without_ewald_curvature_for_every_shape(rng):
    """I(q) = I(-q) on a flat (q_z = 0) slice, also for the non-centrosymmetric
    aggregates; their 3D intensity is not symmetric under q -> (qx, qy, -qz)."""
    lib = _library()
    q = np.concatenate([rng.uniform(-0.4, 0.4, (300, 2)), np.zeros((300, 1))], 1)
    quats = random_quaternions(4, rng)
    for kind, t in (("melt", 0.37), ("dimer", None), ("rod", None), ("aggregate", None)):
        fr = _frames(kind, quats, t=t, scale=[1.0, 1.1, 0.9, 1.0], variant=[0, 1, 2, 0])
        plus, minus = expected_patterns(lib, q, fr), expected_patterns(lib, -q, fr)
        np.testing.assert_allclose(plus, minus, rtol=1e-4, atol=1e-6 * plus.max())
    fr = _frames("aggregate", quats, variant=[0, 1, 2, 0])
    mirror = q.copy()
    mirror[:, 2] = 0.3
    flipped = mirror * [1, 1, -1]
    a, b = expected_patterns(lib, mirror, fr), expected_patterns(lib, flipped, fr)
    assert np.abs(a - b).max() > 0.05 * a.max()


def test_dimer_and_rod_are_their_closed_forms(rng):
    lib = _library()
    a = lib.edge_nm
    quats = random_quaternions(3, rng)
    q_lab = rng.uniform(-0.3, 0.3, (200, 3))
    mats = rotation_matrices(quats)
    dimer = expected_patterns(lib, q_lab, _frames("dimer", quats))
    rod = expected_patterns(lib, q_lab, _frames("rod", quats))
    for k, m in enumerate(mats):
        qm = q_lab @ m
        exact = (cube_amplitude(qm, a) * 2 * np.cos(qm[:, 0] * a / 2)) ** 2
        np.testing.assert_allclose(dimer[k], exact, rtol=2e-4, atol=1e-6 * exact.max())
        h = np.array(lib.rod_half)
        box = 8 * h.prod() * np.prod(np.sinc(qm * h / np.pi), axis=1)
        np.testing.assert_allclose(rod[k], box**2, rtol=2e-4, atol=1e-6 * (box**2).max())


# --- the melt family: a coherent sequence of shapes -----------------------------------------------

def _axis_profile(lib, t, q):
    quat = np.array([[1.0, 0, 0, 0]])
    pts = np.stack([q, 0 * q, 0 * q], 1)
    return expected_patterns(lib, pts, _frames("melt", quat, t=t))[0]


def test_melt_intermediate_t_keeps_true_zeros_that_a_mixture_fills():
    """Half-way between two computed levels the pattern is |(1-f) F_l + f F_l+1|^2,
    which has exact zeros (F is real); the incoherent mixture of the two levels'
    intensities has none there."""
    lib = _library(melt_levels=5)
    q = np.linspace(0.12, 0.26, 14001)
    for lo in (1, 2):
        t = 0.5 * (lib.melt_t[lo] + lib.melt_t[lo + 1])
        coherent = _axis_profile(lib, t, q)
        i0 = _axis_profile(lib, t, np.array([0.0]))[0]
        mixture = 0.5 * (_axis_profile(lib, lib.melt_t[lo], q)
                         + _axis_profile(lib, lib.melt_t[lo + 1], q))
        assert coherent.min() / i0 < 1e-7
        assert mixture.min() / i0 > 100 * coherent.min() / i0
        assert mixture.min() / i0 > 1e-6


def test_melt_family_follows_the_true_shape_at_intermediate_t(rng):
    """Between levels the interpolated amplitude approximates the superellipsoid
    computed directly at that t (coarse 5-level family, random directions)."""
    lib = _library(melt_levels=5)
    q = rng.standard_normal((4000, 3))
    q *= rng.uniform(0.0, 0.45, (4000, 1)) / np.linalg.norm(q, axis=1, keepdims=True)
    for t in (0.2, 0.45, 0.6, 0.85):
        sim = expected_patterns(lib, q, _frames("melt", np.array([[1.0, 0, 0, 0]]), t=t))[0]
        half = melt_half_size(t, lib.edge_nm, 0.1)
        dq = 0.004
        grid = superellipsoid_amplitude_grid(int(0.5 / dq) + 2, dq, half,
                                             superellipsoid_exponent(t))
        exact = map_coordinates(grid, (np.abs(q) / dq).T, order=1) ** 2
        rel = np.sqrt(np.mean((sim - exact) ** 2) / np.mean(exact**2))
        assert rel < 0.02, (t, rel)


def test_first_zero_moves_continuously_from_cube_to_sphere():
    """Along a face normal the first zero moves from 2 pi / a (cube) to 4.493 / r
    (the larger sphere) monotonically over the continuum 0.1 < t < 0.9, and
    stays a true zero at every t."""
    lib = _library()
    q = np.linspace(0.13, 0.19, 6001)
    firsts = []
    for t in np.linspace(0.0, 1.0, 21):
        prof = _axis_profile(lib, t, q)
        i0 = _axis_profile(lib, t, np.array([0.0]))[0]
        k = int(np.argmin(prof))
        assert prof[k] / i0 < 1e-7, t
        firsts.append(q[k])
    assert firsts[0] == pytest.approx(2 * np.pi / lib.edge_nm, abs=2e-5)
    assert firsts[-1] == pytest.approx(4.4934 / lib.melt_half[-1], abs=2e-5)
    assert np.all(np.diff(firsts) > 0)


# --- background ---------------------------------------------------------------------------------

def test_background_profile_is_flat_plus_a_radial_decay():
    p = SimulationParams.from_dict(small_simulation_params())
    det = build_detector(p, np.random.default_rng(0))
    eff = det.correction() * det.mask
    for flat in (0.0, 0.3, 1.0):
        prof = background_profile(det, flat, 0.2)
        assert prof.sum() == pytest.approx(1.0)
        assert np.all(prof[~det.mask] == 0) and np.all(prof[det.mask] > 0)
    np.testing.assert_allclose(background_profile(det, 1.0, 0.2), eff / eff.sum(), rtol=1e-12)
    # the gas/solvent term per unit efficiency falls as exp(-|q| / q_decay)
    gas = background_profile(det, 0.0, 0.2)[det.mask] / eff[det.mask]
    qn = det.q_norm[det.mask]
    np.testing.assert_allclose(np.log(gas) + qn / 0.2, np.log(gas[0]) + qn[0] / 0.2, atol=1e-9)


def test_background_counts_are_poisson_with_the_profile(rng):
    prof = rng.uniform(0.2, 1.0, 300)
    prof /= prof.sum()
    counts = background_sparse(5000, 40.0, prof, rng)
    per_frame = np.asarray(counts.sum(1)).ravel()
    assert per_frame.mean() == pytest.approx(40.0, abs=4 * np.sqrt(40 / 5000))
    assert per_frame.var() / per_frame.mean() == pytest.approx(1.0, abs=0.08)
    per_pixel = np.asarray(counts.sum(0)).ravel()
    expected = 5000 * 40.0 * prof
    chi2 = ((per_pixel - expected) ** 2 / expected).sum()
    assert chi2 < 300 + 5 * np.sqrt(2 * 300)  # chi^2 with ~300 degrees of freedom
    assert background_sparse(10, 0.0, prof, rng).nnz == 0


@pytest.mark.slow
def test_simulated_background_is_recorded_and_follows_its_profile(tmp_path):
    from spicompute.io.truth import read_truth, write_truth

    p = SimulationParams.from_dict(small_simulation_params(
        n_frames=300, photons_mean=1.0, background_photons=200.0, background_flat_fraction=0.2,
        background_q_nm=0.15))
    frames, truth = simulate(p, progress=False)
    bg = truth.background_photons
    assert bg.dtype.kind == "i" and bg.mean() == pytest.approx(200, abs=4 * np.sqrt(200 / 300))
    total = frames.photons_per_frame()
    assert np.all(total >= bg)
    signal = total - bg
    assert signal.mean() == pytest.approx(1.0, abs=0.5)
    summed = np.asarray(frames.counts.sum(0)).ravel()
    expected = bg.sum() * background_profile(frames.detector, 0.2, 0.15)
    good = frames.detector.mask
    assert np.corrcoef(summed[good], expected[good])[0, 1] > 0.95
    assert frames.counts[:, ~good].nnz == 0
    write_truth(tmp_path / "truth.h5", truth)
    np.testing.assert_array_equal(read_truth(tmp_path / "truth.h5")["background_photons"], bg)


# --- geometries ----------------------------------------------------------------------------------

GEOMETRIES = {  # (detector_size, binning, beam_center_px)
    "101_off_centre": (101, 2, [30.0, 62.5]),
    "128_even": (128, 2, None),
    "129_default": (129, 2, None),
    "255_unbinned": (255, 1, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_other_detectors_simulate_correctly(name):
    """Odd/even sizes, binning 1 and an off-centre beam: the beam pixel has the
    lowest |q|, the q-range follows the physical detector (not the pixel
    count), photons land only on good pixels, and sphere patterns are centred
    on the beam."""
    size, binning, centre = GEOMETRIES[name]
    p = SimulationParams.from_dict(dict(n_frames=40, detector_size=size, binning=binning,
                                        beam_center_px=centre, photons_mean=3000, seed=4,
                                        background_photons=20,
                                        fractions={"sphere": 1.0}))
    frames, truth = simulate(p, progress=False)
    det = frames.detector
    beam = ((size - 1) / 2, (size - 1) / 2) if centre is None else tuple(centre)
    assert det.shape == (size, size) and det.center == pytest.approx(beam)
    rows, cols = np.unravel_index(np.argmin(det.q_norm), det.shape)
    assert abs(rows - beam[0]) <= 0.5 and abs(cols - beam[1]) <= 0.5
    # q of the farthest pixel from the beam: physical pitch x distance in pixels
    far = np.hypot(max(beam[0], size - 1 - beam[0]), max(beam[1], size - 1 - beam[1]))
    theta2 = np.arctan(far * p.pixel_size_mm * binning / p.distance_mm)
    k = 2 * np.pi / p.wavelength_nm
    assert det.q_norm.max() == pytest.approx(2 * k * np.sin(theta2 / 2), rel=1e-6)
    assert frames.counts[:, ~det.mask].nnz == 0
    signal = frames.photons_per_frame() - truth.background_photons
    assert signal.mean() == pytest.approx(3000, rel=0.05)
    # sphere rings are centred on the beam: count centroid within 8 px of it
    total = np.asarray(frames.counts.sum(0)).ravel().reshape(size, size).astype(float)
    yy, xx = np.mgrid[:size, :size]
    near = np.hypot(yy - beam[0], xx - beam[1]) <= 8 * (2 / binning)
    w = total * near
    assert np.hypot((w * yy).sum() / w.sum() - beam[0],
                    (w * xx).sum() / w.sum() - beam[1]) < 0.5 * (2 / binning)


def test_unbinned_255_covers_the_same_q_range_as_binned_129():
    q = {}
    for size, binning in ((129, 2), (255, 1)):
        p = SimulationParams.from_dict(dict(detector_size=size, binning=binning))
        q[size] = build_detector(p, np.random.default_rng(0)).q_norm.max()
    assert q[255] == pytest.approx(q[129], rel=0.01)


# --- the low-photon set with background, photon statistics, orientations -----------------------

def test_low_photon_set_statistics(low_photon_simulation):
    """~400 particle + ~50 background photons: mean, background share, Poisson
    dispersion of the totals around their expectation, photon conservation."""
    frames, truth, p = low_photon_simulation
    total = frames.photons_per_frame().astype(float)
    bg = truth.background_photons.astype(float)
    n = len(total)
    assert total.mean() == pytest.approx(p.photons_mean + p.background_photons, rel=0.02)
    assert (total - bg).mean() == pytest.approx(p.photons_mean, rel=0.02)
    share = bg.sum() / total.sum()
    assert share == pytest.approx(50 / 450, abs=0.01)
    assert bg.mean() == pytest.approx(50, abs=4 * np.sqrt(50 / n))
    assert bg.var() / bg.mean() == pytest.approx(1.0, abs=0.25)
    expected = truth.photons_expected + p.background_photons
    z = (total - expected) / np.sqrt(expected)
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert z.var() == pytest.approx(1.0, abs=0.25)
    assert abs(total.sum() - expected.sum()) < 4 * np.sqrt(expected.sum())
    # frames are sparse: most good pixels hold no photon, few hold more than one
    dense = frames.dense(np.arange(50))[:, frames.detector.mask]
    assert (dense == 0).mean() > 0.5


def test_orientations_are_uniform_on_so3(rng, low_photon_simulation):
    """Rotated axes are uniform on the sphere and the rotation angle has the Haar
    density (1 - cos w) / pi, for random_quaternions and for the simulated truth."""
    from scipy.stats import kstest

    _, truth, _ = low_photon_simulation
    for quats in (random_quaternions(20000, rng), truth.quaternion):
        mats = rotation_matrices(quats)
        for axis in range(3):
            assert kstest(mats[:, 2, axis], "uniform", args=(-1, 2)).pvalue > 1e-3
        phi = np.arctan2(mats[:, 1, 2], mats[:, 0, 2])
        assert kstest(phi, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3
        omega = 2 * np.arccos(np.clip(np.abs(quats[:, 0]), 0, 1))
        assert kstest(omega, lambda w: (w - np.sin(w)) / np.pi).pvalue > 1e-3
    # and the test can fail: a rotation angle uniform in [0, pi] is rejected
    assert kstest(rng.uniform(0, np.pi, 20000), lambda w: (w - np.sin(w)) / np.pi).pvalue < 1e-6


def test_fluence_tail_and_bimodal_melt_distribution():
    """The matrix factors of issue 22: a halo of weak hits, a melt sequence mostly at its ends."""
    from spicompute.simulation.simulate import draw_frame_parameters

    base = SimulationParams.from_dict({"n_frames": 20000, "fractions": {"melt": 1.0}})
    plain = draw_frame_parameters(base, np.random.default_rng(0))
    assert plain["fluence"].min() >= base.fluence_min
    tail = SimulationParams.from_dict({"n_frames": 20000, "fractions": {"melt": 1.0},
                                       "fluence_tail_fraction": 0.3, "fluence_tail_decades": 1.0})
    f = draw_frame_parameters(tail, np.random.default_rng(0))["fluence"]
    weak = f < tail.fluence_min
    assert weak.mean() == pytest.approx(0.3, abs=0.015)
    assert f[weak].min() >= tail.fluence_min / 10 - 1e-12
    # log-uniform over the decade below fluence_min: its median in log is half a decade down
    assert np.median(np.log10(f[weak] / tail.fluence_min)) == pytest.approx(-0.5, abs=0.03)
    t_uniform = plain["melt_t"]
    assert np.histogram(t_uniform, bins=5, range=(0, 1))[0].std() / len(t_uniform) < 0.01
    bimodal = SimulationParams.from_dict({"n_frames": 20000, "fractions": {"melt": 1.0}, "melt_beta_shape": 0.3})
    t = draw_frame_parameters(bimodal, np.random.default_rng(0))["melt_t"]
    ends = ((t < 0.1) | (t > 0.9)).mean()
    assert ends > 0.5 and ((t > 0.4) & (t < 0.6)).mean() < 0.1
    with pytest.raises(ParameterError, match="simulate.melt_beta_shape"):
        SimulationParams.from_dict({"melt_beta_shape": 0})
    with pytest.raises(ParameterError, match="simulate.fluence_tail_fraction"):
        SimulationParams.from_dict({"fluence_tail_fraction": 1.5})
