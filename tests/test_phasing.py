"""Phase retrieval science (spicompute.phasing) on closed-form intensities made here."""

import numpy as np
import pytest
import scipy.fft

from spicompute.phasing import (INV_E, PhasingSettings, align_to, autocorrelation_extent,
                                intensity_volume, invariant_volume, invert, particle_volume,
                                phase_retrieval, prtf_at_data_limit, prtf_resolution, prtf_shells,
                                radial_index, real_space_step, to_centred, to_fft_order)
from spicompute.shapes import cube_intensity, sphere_intensity


def _grid(size, step, ndim):
    axis = (np.arange(size) - size // 2) * step
    return np.stack(np.meshgrid(*([axis] * ndim), indexing="ij"), -1)


def _geometry(size, edge_nm, edge_vox):
    """dq such that the edge spans an odd whole number of voxels (voxel-exact truth)."""
    dx = edge_nm / edge_vox
    return 2 * np.pi / (size * dx), dx


def _cube_truth(size, edge_nm, dx, ndim=3):
    x = _grid(size, dx, ndim)
    return np.prod(np.clip(0.5 - (np.abs(x) - edge_nm / 2) / dx, 0, 1), axis=-1)


def _sphere_truth(size, radius_nm, dx):
    r = np.linalg.norm(_grid(size, dx, 3), axis=-1)
    return np.clip(0.5 - (r - radius_nm) / dx, 0, 1)


def _best_cc(density, truth):
    """Max Pearson CC over integer translations and the centro-inversion twin (brute force FFT)."""
    ndim = truth.ndim
    axes = tuple(range(ndim))
    best = -1.0
    # the twin about the grid centre L//2 of an odd grid is a plain flip
    for cand in (density, np.flip(density, axis=axes)):
        cc = np.real(scipy.fft.ifftn(scipy.fft.fftn(truth) * np.conj(scipy.fft.fftn(cand))))
        shift = np.unravel_index(cc.argmax(), cc.shape)
        moved = np.roll(cand, shift, axis=axes)
        best = max(best, np.corrcoef(moved.ravel(), truth.ravel())[0, 1])
    return best


def _observed(size, dq, beamstop_dq, ndim=3):
    q = np.linalg.norm(_grid(size, dq, ndim), axis=-1)
    return q > beamstop_dq * dq


@pytest.mark.parametrize("size,edge_nm,edge_vox,beamstop", [
    (41, 42.0, 13, 0.0),   # everything observed
    (41, 42.0, 13, 3.0),   # beamstop: |q| <= 3 dq floats free
    (33, 30.0, 11, 2.0),   # another grid and particle size
    (51, 51.0, 17, 2.0),   # > coarse_size: multiscale start from the central 25^3 of q
])
@pytest.mark.slow
def test_noiseless_cube_is_retrieved(size, edge_nm, edge_vox, beamstop):
    dq, dx = _geometry(size, edge_nm, edge_vox)
    inten = cube_intensity(_grid(size, dq, 3), edge_nm).astype(np.float64)
    obs = _observed(size, dq, beamstop)
    r = phase_retrieval(inten, obs, dq, PhasingSettings(seed=3))
    truth = _cube_truth(size, edge_nm, dx)
    assert r.dx_nm == pytest.approx(dx)
    assert particle_volume(r.density, dx) == pytest.approx(edge_nm**3, rel=0.05)
    assert _best_cc(r.density, truth) >= 0.9
    assert r.final_error < 0.05
    # unit-density particle -> density ~ 1 inside (robust: median of the support)
    assert np.median(r.density[r.support]) == pytest.approx(1.0, rel=0.15)
    # noiseless: every start finds the same phases -> PRTF near 1, resolution = data limit
    valid = np.isfinite(r.prtf)
    assert np.nanmean(r.prtf) > 0.85 and np.nanmin(r.prtf) > INV_E
    assert prtf_at_data_limit(r.prtf, r.prtf_q_nm)
    assert r.resolution_nm == pytest.approx(2 * np.pi / r.prtf_q_nm[valid][-1])
    assert not valid[0] if beamstop > 0 else valid[1]
    # the support encloses the cube but is not the whole box
    assert truth[r.support].sum() > 0.98 * truth.sum()
    assert r.support.sum() < 3 * edge_vox**3


@pytest.mark.slow
def test_noiseless_sphere_is_retrieved_with_a_beamstop():
    size, diameter = 41, 42.0
    dq, dx = _geometry(size, diameter, 13)
    inten = sphere_intensity(_grid(size, dq, 3), diameter / 2)
    r = phase_retrieval(inten, _observed(size, dq, 3.0), dq, PhasingSettings(seed=1))
    truth = _sphere_truth(size, diameter / 2, dx)
    assert _best_cc(r.density, truth) >= 0.9
    # same volume definition on the voxelised truth (the voxel count of a sphere's rim is coarse)
    assert particle_volume(r.density, dx) == pytest.approx(particle_volume(truth, dx), rel=0.05)


@pytest.mark.slow
def test_cube_and_sphere_are_told_apart():
    """A retrieval is specific: the cube's density correlates worse with the sphere's truth."""
    size = 41
    dq, dx = _geometry(size, 42.0, 13)
    r = phase_retrieval(cube_intensity(_grid(size, dq, 3), 42.0).astype(np.float64),
                        _observed(size, dq, 2.0), dq, PhasingSettings(seed=0))
    assert _best_cc(r.density, _cube_truth(size, 42.0, dx)) > _best_cc(
        r.density, _sphere_truth(size, 42.0 * (np.pi / 6) ** (-1 / 3) / 2, dx)) + 0.02


@pytest.mark.parametrize("size", [64, 65])
def test_2d_square_with_beamstop_and_gap(size):
    edge, dq = 40.0, 0.05
    dx = real_space_step(size, dq)
    q = _grid(size, dq, 2)
    q3 = np.concatenate([q, np.zeros(q.shape[:-1] + (1,))], -1)
    inten = cube_intensity(q3, edge) / edge**2  # |projection|^2 of the cube = 2D square
    obs = (np.linalg.norm(q, axis=-1) > 2.5 * dq) & (np.abs(q[..., 0] - q[..., 1]) > 1.0 * dq)
    r = phase_retrieval(inten, obs, dq, PhasingSettings(seed=2))
    truth = _cube_truth(size, edge, dx, ndim=2)
    if size % 2 == 0:  # even grid: the twin about the centre is flip + roll by one
        best = max(_best_cc(r.density, truth),
                   _best_cc(np.roll(np.flip(r.density), 1, (0, 1)), truth))
    else:
        best = _best_cc(r.density, truth)
    assert best >= 0.95
    assert particle_volume(r.density, dx) == pytest.approx(edge**2, rel=0.1)


def test_deterministic_for_a_seed_and_different_starts_for_another():
    size = 25
    dq, dx = _geometry(size, 24.0, 7)
    inten = cube_intensity(_grid(size, dq, 3), 24.0).astype(np.float64)
    obs = _observed(size, dq, 1.0)
    a = phase_retrieval(inten, obs, dq, PhasingSettings(seed=5, n_dm=30, n_er=10))
    b = phase_retrieval(inten, obs, dq, PhasingSettings(seed=5, n_dm=30, n_er=10))
    c = phase_retrieval(inten, obs, dq, PhasingSettings(seed=6, n_dm=30, n_er=10))
    np.testing.assert_array_equal(a.density, b.density)
    assert not np.array_equal(a.errors, c.errors)


def test_invert_maps_index_to_minus_index_in_fft_order():
    for size in (6, 7):
        x = np.arange(size**2, dtype=float).reshape(size, size)
        y = invert(x, 2)
        for i in range(size):
            for j in range(size):
                assert y[i, j] == x[(-i) % size, (-j) % size]
        np.testing.assert_array_equal(invert(y, 2), x)
        np.testing.assert_array_equal(to_centred(to_fft_order(x, 2), 2), x)


def test_align_recovers_shift_and_twin():
    rng = np.random.default_rng(0)
    ref = np.zeros((15, 15, 15), dtype=np.float32)
    ref[2:6, 3:5, 1:7] = rng.random((4, 2, 6)) + 0.5  # asymmetric blob, FFT order
    moved = np.roll(ref, (3, -2, 5), axis=(0, 1, 2))
    twin = np.roll(invert(ref, 3), (1, 4, -6), axis=(0, 1, 2))
    aligned, _, inverted = align_to(ref, np.stack([moved, twin, ref]), 3)
    np.testing.assert_allclose(aligned, np.stack([ref, ref, ref]), atol=1e-6)
    assert inverted.tolist() == [False, True, False]


def test_prtf_is_one_for_agreeing_phases_and_low_for_random_ones():
    rng = np.random.default_rng(1)
    size, ndim = 21, 3
    half = size // 2 + 1
    amp = np.ones((size, size, half), dtype=np.float32)
    obs = np.ones_like(amp, dtype=bool)
    same = np.exp(1j * rng.uniform(0, 2 * np.pi, (size, size, half)))
    agree = prtf_shells(np.stack([same] * 6) * 3.0, obs, amp, size, ndim)
    np.testing.assert_allclose(agree, 1.0, atol=1e-9)
    random = np.exp(1j * rng.uniform(0, 2 * np.pi, (16, size, size, half)))
    low = prtf_shells(random, obs, amp, size, ndim)
    assert np.nanmean(low[2:]) < 0.15  # debiased: E[S m^2 - 1] = 0 for random phases
    # one start: no phase agreement can be measured
    assert np.all(np.isnan(prtf_shells(same[None], obs, amp, size, ndim)))
    assert radial_index(size, ndim).max() == int(np.rint(np.sqrt(3) * (size // 2)))


def test_prtf_resolution_interpolates_the_1_over_e_crossing():
    q = np.arange(11) * 0.1
    prtf = np.array([np.nan, 1, 0.9, 0.8, 0.6, 0.5, 0.3, 0.2, 0.1, 0.1, 0.1])
    # crosses 1/e between q = 0.5 (0.5) and 0.6 (0.3)
    t = (0.5 - INV_E) / 0.2
    assert prtf_resolution(prtf, q) == pytest.approx(2 * np.pi / (0.5 + 0.1 * t))
    assert prtf_resolution(np.r_[np.nan, np.ones(10)], q) == pytest.approx(2 * np.pi / 1.0)
    assert prtf_at_data_limit(np.r_[np.nan, np.ones(10)], q) and not prtf_at_data_limit(prtf, q)
    # below 1/e from the first valid shell: no resolution, not the coarsest shell
    assert np.isnan(prtf_resolution(np.r_[np.nan, np.nan, np.full(9, 0.2)], q))


def _random_phase_starts(n_starts, size, seed):
    """rfft half-grids of ``n_starts`` starts sharing |F| but with independent random phases."""
    rng = np.random.default_rng(seed)
    half = size // 2 + 1
    amp = rng.random((size, size, half)) + 0.5
    phases = np.exp(1j * rng.uniform(0, 2 * np.pi, (n_starts, size, size, half)))
    return amp * phases, amp


def test_random_phase_starts_give_no_resolution_at_the_default_number_of_starts():
    """4 random starts have |<e^{i phi}>| ~ 0.44 > 1/e; only the debiased PRTF sees no agreement."""
    from spicompute.stages.phase import DEFAULTS

    size, n = 21, DEFAULTS["n_starts"]
    f, amp = _random_phase_starts(n, size, 4)
    obs = np.ones(amp.shape, dtype=bool)
    q = np.arange(size // 2 + 1) * 0.05
    plain = np.abs(np.mean(f / np.abs(f), axis=0)).mean()
    assert plain > INV_E  # the reason a plain PRTF always reported the data limit
    prtf = prtf_shells(f, obs, amp.astype(np.float32), size, 3)
    assert np.nanmax(prtf[1:]) < INV_E
    assert np.isnan(prtf_resolution(prtf, q)) and not prtf_at_data_limit(prtf, q)


def test_a_well_phased_noisy_cube_gets_a_finite_resolution():
    size, dq = 27, 0.0411
    q = _grid(size, dq, 3)
    inten = _poisson(cube_intensity(q, 42.0), _observed_band(size, dq), 10.0, 0)
    r = phase_retrieval(inten, _observed_band(size, dq), dq, PhasingSettings(seed=0))
    assert r.kept.sum() >= 2
    assert np.isfinite(r.resolution_nm)
    assert 2 * np.pi / r.prtf_q_nm[-1] <= r.resolution_nm < 42.0


def test_particle_volume_counts_voxels_above_1e4_of_the_mass():
    rho = np.zeros((20, 20, 20))
    rho[:5, :5, :5] = 1.0            # 125 voxels, each 1/125 > 1e-4 of the mass
    rho[10, 10, 10] = 0.5e-4 * 125   # below 1e-4 of the total -> not counted
    rho[11, 11, 11] = 2e-4 * 125     # above -> counted
    assert particle_volume(rho, 2.0) == pytest.approx(126 * 8.0)
    assert particle_volume(np.zeros((3, 3, 3)), 1.0) == 0.0


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        phase_retrieval(np.ones((5, 6, 5)), np.ones((5, 6, 5), bool), 0.1)
    with pytest.raises(ValueError):
        phase_retrieval(np.full((5, 5, 5), np.nan), np.ones((5, 5, 5), bool), 0.1)
    with pytest.raises(ValueError):
        phase_retrieval(np.ones((5, 5, 5)), np.zeros((5, 5, 5), bool), 0.1)


def test_scale_support_halves_a_cube_about_the_origin():
    from spicompute.phasing import scale_support
    size = 21
    k = np.abs(scipy.fft.ifftshift(np.arange(size) - size // 2))
    cube = (k[:, None, None] <= 6) & (k[None, :, None] <= 6) & (k[None, None, :] <= 6)
    half = scale_support(cube, 0.5, 3)
    assert half.sum() == 7**3 and half[0, 0, 0] and not half[4, 0, 0]
    np.testing.assert_array_equal(scale_support(cube, 1.0, 3), cube)


def test_upsample_support_keeps_the_field_of_view():
    from spicompute.phasing import upsample_support
    k = np.abs(np.arange(11) - 5)
    coarse = (k[:, None] <= 2) & (k[None, :] <= 2)          # 5 x 5 coarse voxels
    fine = upsample_support(coarse, 21, 2, dilate_vox=0.0 + 1e-6)
    kf = np.abs(np.arange(21) - 10)
    # coarse half-width 2.5 voxels of 21/11 fine voxels -> ~4.8 fine voxels
    assert fine[10, 10] and fine[10, 14] and not fine[10, 16]
    np.testing.assert_array_equal(fine, fine[::-1, ::-1])
    assert fine.sum() == pytest.approx(((kf <= 4.8).sum()) ** 2, rel=0.25)


def test_half_max_volume_does_not_depend_on_the_sampling():
    from spicompute.phasing import particle_volume_half_max

    for n, dx in ((20, 2.0), (80, 0.5)):  # the same 10 nm cube sampled 5 and 20 voxels across
        rho = np.zeros((n, n, n))
        k = int(round(10 / dx))
        rho[:k, :k, :k] = 1.0
        rho += 0.01 * np.random.default_rng(0).random(rho.shape)  # a faint noise floor
        assert particle_volume_half_max(rho, dx) == pytest.approx(1000.0, rel=0.01)
    # the paper's per-voxel threshold loses a large particle entirely (8,000 voxels of 1/8000 > 1e-4 still count;
    # 20,000 do not)
    big = np.zeros((40, 40, 40))
    big[:28, :28, :28] = 1.0
    assert particle_volume(big, 1.0) == 0.0 and particle_volume_half_max(big, 1.0) == pytest.approx(28 ** 3)


# ---------------------------------------------------------------- particle volume on known shapes

def _observed_band(size, dq, beamstop_nm=0.035):
    """The VAE volumes' ``observed``: centre |q| < ~0.035 rad/nm and |q| > q_max unobserved."""
    q = np.linalg.norm(_grid(size, dq, 3), axis=-1)
    return (q > beamstop_nm) & (q <= (size // 2) * dq)


def _poisson(intensity, observed, photons_outer, seed):
    """Photon counts with ``photons_outer`` expected photons per voxel at the outer 10 % of q.

    At ~10 photons per voxel at q_max the low-q voxels hold 10^5..10^7: a merged
    3D volume from many frames.  Scaled back so that the intensity keeps nm^6 units.
    """
    size = intensity.shape[0]
    q = np.linalg.norm(_grid(size, 1.0, 3), axis=-1)
    outer = observed & (q > 0.9 * (size // 2))
    k = photons_outer / intensity[outer].mean()
    return np.random.default_rng(seed).poisson(intensity * k).astype(np.float64) / k


def _shape_intensity(shape, q, volume):
    if shape == "cube":
        return cube_intensity(q, volume ** (1 / 3)).astype(np.float64)
    return sphere_intensity(q, (3 * volume / (4 * np.pi)) ** (1 / 3))


def _stage_settings(seed):
    from spicompute.stages.phase import options, settings_for

    return settings_for(options({}), seed)


CUBE_V = 42.0**3  # 74,088 nm^3


@pytest.mark.parametrize("size,dq", [(27, 0.0411), (41, 0.045)])
@pytest.mark.parametrize("shape,volume", [("cube", CUBE_V), ("sphere", CUBE_V),
                                          ("sphere", 1.1 * CUBE_V)])
@pytest.mark.slow
def test_invariant_volume_is_right_on_noisy_cubes_and_spheres(size, dq, shape, volume):
    """Sub-voxel volume estimate, stage defaults, Poisson noise: +-5 % of the true volume."""
    observed = _observed_band(size, dq)
    inten = _poisson(_shape_intensity(shape, _grid(size, dq, 3), volume), observed, 10.0, size)
    r = phase_retrieval(inten, observed, dq, _stage_settings([0, size]))
    from spicompute.stages.phase import DEFAULTS

    assert r.final_error < DEFAULTS["max_error"] / 2  # converged with room to spare
    v, tail = invariant_volume(r.density, inten, observed, dq)
    assert v == pytest.approx(volume, rel=0.05)
    assert 0.02 < tail < 0.15  # the Porod tail beyond q_max: a few % of the invariant
    # the intensity-only cross-check agrees to ~10 % (Guinier from the first observed shells)
    assert intensity_volume(inten, observed, dq) == pytest.approx(volume, rel=0.1)


@pytest.mark.slow
def test_wrong_size_object_gives_a_proportionally_wrong_volume():
    """Negative control: a 25 % larger cube (1.95x the volume) is measured as such."""
    size, dq = 27, 0.0411
    observed = _observed_band(size, dq)
    volumes = []
    for edge in (42.0, 52.5):
        inten = _poisson(cube_intensity(_grid(size, dq, 3), edge).astype(np.float64), observed,
                         10.0, 1)
        r = phase_retrieval(inten, observed, dq, _stage_settings([1]))
        volumes.append(invariant_volume(r.density, inten, observed, dq)[0])
    assert volumes[0] == pytest.approx(CUBE_V, rel=0.05)
    assert volumes[1] / volumes[0] == pytest.approx((52.5 / 42.0) ** 3, rel=0.05)


def test_invariant_volume_is_exact_for_a_known_density_and_scale_free():
    """A voxel-exact cube fully sampled: (sum rho)^2 / sum rho^2 dx^3 with no tail needed."""
    size, dx = 31, 2.0
    dq = 2 * np.pi / (size * dx)
    rho = np.zeros((size,) * 3)
    rho[10:21, 12:19, 11:20] = 1.0        # 11 x 7 x 9 voxels
    f = np.abs(scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(rho)))) ** 2 * dx**6
    observed = np.ones(f.shape, dtype=bool)
    v, _ = invariant_volume(rho, f, observed, dq)
    # the corners of the cubic grid beyond q_max are replaced by a Porod tail: a few %
    assert v == pytest.approx(11 * 7 * 9 * dx**3, rel=0.05)
    v3, _ = invariant_volume(3 * rho, 9 * f, observed, dq)
    assert v3 == pytest.approx(v)


@pytest.mark.parametrize("size", [27, 41])
def test_autocorrelation_extent_measures_the_particle_and_the_oversampling(size):
    """42 nm cube and 54 nm sphere: extent in a wide box, accepted at 2x, a cube refused below."""
    def run(shape, box_nm):
        dq = 2 * np.pi / box_nm
        q = _grid(size, dq, 3)
        inten = cube_intensity(q, 42.0) if shape == "cube" else sphere_intensity(q, 27.0)
        return autocorrelation_extent(inten, _observed_band(size, dq), dq)

    extent, ok = run("cube", 153.0)
    assert ok and extent == pytest.approx(42.0, rel=0.1)
    extent, ok = run("sphere", 153.0)
    # a ball overlaps its shifted copy by (1 - r/D)^2 (1 + r/2D): 5 % of the peak at ~0.8 D
    assert ok and 0.75 * 54.0 < extent < 54.0
    # exactly 2x oversampling (the vae's Nyquist bound for the particle): accepted
    assert run("cube", 84.0)[1] and run("sphere", 108.0)[1]
    # a cube at 1.8x and 1.6x: refused, the extent saturates at half the box
    for box in (75.6, 67.2):
        extent, ok = run("cube", box)
        assert not ok and extent == pytest.approx(box / 2, rel=0.05)


# --------------------------------------------------------------------------- torch backend
def _cube_case(size=33, edge_nm=30.0, edge_vox=11, beamstop=2.0):
    dq, dx = _geometry(size, edge_nm, edge_vox)
    inten = cube_intensity(_grid(size, dq, 3), edge_nm).astype(np.float64)
    return inten, _observed(size, dq, beamstop), dq, dx


@pytest.mark.parametrize("n_dm", [1, 3, 5])
def test_torch_backend_is_the_numpy_iteration_to_float32_rounding(n_dm):
    """Same starts, same projections: torch.fft on the CPU agrees with scipy.fft to 1e-5.

    The difference map amplifies float32 rounding (measured: 3e-7 after one iteration, 6e-6
    after 10, 1e-4 after 20, 2e-2 after 40: about x e^0.27 per iteration), so runs of default
    length end in equally good but different solutions on the two FFT libraries; they are
    compared by what they retrieve (next test), not voxel by voxel.
    """
    inten, obs, dq, _ = _cube_case()
    out = {b: phase_retrieval(inten, obs, dq, PhasingSettings(n_dm=n_dm, n_er=0, n_starts=2, seed=3, backend=b,
                                                              coarse_size=0, shrinkwrap_every=4))
           for b in ("numpy", "torch")}
    a, b = out["numpy"], out["torch"]
    assert np.abs(a.density - b.density).max() <= 1e-5 * np.abs(a.density).max()
    np.testing.assert_allclose(a.errors, b.errors, rtol=1e-5)
    assert np.array_equal(a.support, b.support)


def test_torch_backend_retrieves_the_same_cube():
    """A full default-length run on each backend: same particle, same volume, both converged."""
    inten, obs, dq, dx = _cube_case()
    truth = _cube_truth(33, 30.0, dx)
    res = {b: phase_retrieval(inten, obs, dq, PhasingSettings(n_starts=3, seed=1, backend=b))
           for b in ("numpy", "torch")}
    for r in res.values():
        assert r.final_error < 0.05
        assert _best_cc(r.density, truth) > 0.97
    v = {b: particle_volume(r.density, r.dx_nm) for b, r in res.items()}
    assert v["torch"] == pytest.approx(v["numpy"], rel=0.03)
    assert _best_cc(res["torch"].density, res["numpy"].density) > 0.98


def test_phase_backend_and_device_parameters():
    from spicompute.errors import ParameterError
    from spicompute.stages.phase import options

    import torch

    o = options({})
    expect = ("torch", "cuda") if torch.cuda.is_available() else ("numpy", "cpu")
    assert (o["backend"], o["device"]) == expect
    assert (options({"backend": "torch", "device": "cpu"})["backend"]) == "torch"
    with pytest.raises(ParameterError, match="phase.backend"):
        options({"backend": "jax"})
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="phase.device.*no CUDA device"):
            options({"device": "cuda"})
    with pytest.raises(ParameterError, match="phase.backend"):
        PhasingSettings(backend="cupy") and phase_retrieval(*_cube_case()[:3], PhasingSettings(backend="cupy"))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_on_cuda_retrieves_the_cube():
    inten, obs, dq, dx = _cube_case()
    r = phase_retrieval(inten, obs, dq, PhasingSettings(n_starts=3, seed=1, backend="torch", device="cuda"))
    assert r.final_error < 0.05 and _best_cc(r.density, _cube_truth(33, 30.0, dx)) > 0.97


def _decoded_spread_volume():
    """A VAE-decoded 27^3 intensity from a 400-photon + 50-background run (point 2 of its line,
    true particle volume 75,437 nm^3) on which every start of the default phasing spread over the
    field of view, Fourier error 0.148, particle volume 694,662 nm^3 -- and 'converged'."""
    from pathlib import Path

    d = np.load(Path(__file__).parent / "data" / "decoded_volume_400ph_spread.npz")
    return d["intensity"].astype(np.float64), d["observed"], float(d["dq_nm"]), float(d["true_volume_nm3"])


def test_spread_starts_are_no_solution_and_the_retry_finds_the_particle(monkeypatch):
    import spicompute.phasing as phasing

    inten, obs, dq, true_v = _decoded_spread_volume()
    settings = PhasingSettings(seed=[0, 3, 2])
    r = phase_retrieval(inten, obs, dq, settings)
    v, _ = invariant_volume(r.density, inten, obs, dq)
    assert r.compact and r.tight_start
    assert v == pytest.approx(true_v, rel=0.1)
    assert np.all(r.forward_ratio[r.kept] < 2.0)
    # negative control: without the check the same starts give the spread density, 'converged'
    monkeypatch.setattr(phasing, "SPREAD_FORWARD_RATIO", np.inf)
    spread = phase_retrieval(inten, obs, dq, settings)
    v_spread, _ = invariant_volume(spread.density, inten, obs, dq)
    assert not spread.tight_start and spread.final_error < 0.15
    assert v_spread > 3 * true_v and spread.forward_ratio[spread.best] > 5


def test_guinier_forward_is_the_particles_forward_scattering_or_nan():
    from spicompute.phasing import guinier_forward

    size, edge = 41, 42.0
    dq, _ = _geometry(size, edge, 13)
    inten = cube_intensity(_grid(size, dq, 3), edge).astype(np.float64)
    # the Guinier fit over the first shells (q Rg ~ 1, Rg = 21 nm) underestimates I(0) = V^2 a little
    assert guinier_forward(inten, _observed(size, dq, 0.5), dq) == pytest.approx(edge ** 6, rel=0.1)
    # a beamstop past the Guinier range (first shell at q Rg = 3 > 1.3): no estimate, so no start is
    # judged by it
    assert np.isnan(guinier_forward(inten, _observed(size, dq, 2.0), dq))


def test_a_phase_retrieval_with_every_start_spread_is_not_compact(monkeypatch):
    """When the retry from half the autocorrelation support spreads too, the result says so
    (the phase stage then flags the volume as not converged)."""
    import spicompute.phasing as phasing

    inten, obs, dq, _ = _decoded_spread_volume()
    monkeypatch.setattr(phasing, "SPREAD_FORWARD_RATIO", 0.5)   # every start counts as spread
    r = phase_retrieval(inten, obs, dq, PhasingSettings(seed=[0, 3, 2], n_starts=2, n_dm=20, n_er=5))
    assert r.tight_start and not r.compact
