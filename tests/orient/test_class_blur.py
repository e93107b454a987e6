"""Class-average blur: the orientation spread of a class average, measured against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spicompute.errors import InputError
from spicompute.geometry import grid_q
from spicompute.io.averages import AverageSet
from spicompute.orient.class_blur import (
    dataset_blur,
    fit_class_blur,
    kernel_quaternions,
    refine_peak,
)
from spicompute.orient.fit import cube_reference, fit_orientations, refine_orientations
from spicompute.orient.quaternions import (
    canonical,
    quat_multiply,
    random_quaternions,
    rotation_matrices,
    rotation_to_quat,
)
from spicompute.orient.sampling import fundamental_orientations, sampling_step_deg
from spicompute.orient.slicing import model_coordinates
from spicompute.shapes import cube_intensity, sphere_intensity

# two geometries: the orient tests' 65^2 grid at 6 keV and a coarser 49^2 one with a smaller cube
GEOMETRIES = {"65px_42nm": dict(size=65, dq=0.0345, lam=0.2066, edge=42.0, fit=dict(r_min=3, r_max=20)),
              "49px_30nm": dict(size=49, dq=0.055, lam=0.1378, edge=30.0, fit=dict(r_min=2, r_max=16))}


def spread_averages(g: dict, quats: np.ndarray, sigma_deg, rng, photons: float,
                    shape: str = "cube", members: int = 60) -> AverageSet:
    """Averages of ``members`` noiseless patterns whose orientations scatter around each of ``quats`` by a
    Gaussian of rms ``sigma_deg`` per lab axis (a number, or (x, y, z)) -- a continuous spread, not the
    7-point kernel -- then Poisson noise with ``photons`` in each average (all its members together)."""
    q = grid_q(g["size"], g["dq"], g["lam"]).reshape(-1, 3)
    sigma = np.deg2rad(np.broadcast_to(np.asarray(sigma_deg, dtype=np.float64), (3,)))
    images = []
    for q0 in quats:
        d = rotation_to_quat(Rotation.from_rotvec(rng.standard_normal((members, 3)) * sigma))
        mq = canonical(quat_multiply(d, q0[None]))
        x = model_coordinates(q, mq)
        vals = cube_intensity(x, g["edge"]) if shape == "cube" else sphere_intensity(x, g["edge"] * 0.62)
        images.append(vals.reshape(members, g["size"], g["size"]).mean(0))
    images = np.asarray(images)
    images = rng.poisson(images * photons / images.sum(axis=(1, 2), keepdims=True)).astype(np.float32)
    m = len(images)
    return AverageSet(images, np.ones_like(images), np.arange(m), np.zeros(m), np.arange(m),
                      np.full(m, float(members)), g["dq"], g["lam"])


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("photons", [1e6, 6e4])   # 160 frames x 400 photons (the paper's level) at the low end
def test_blur_follows_the_members_spread(geometry, photons):
    """A spread of rms sigma about an axis has the kernel's variance along it at b = sigma sqrt(7/2): the
    fitted out-of-plane and in-plane b follow it at both photon levels -- each where the spread is, ~0
    where there is none."""
    g = GEOMETRIES[geometry]
    rng = np.random.default_rng(3)
    quats = random_quaternions(8, rng)
    ref = cube_reference(g["edge"])
    k = np.sqrt(3.5)
    got = {}
    for name, sigma in (("sharp", 0.0), ("even", 3.0), ("out", (4.0, 4.0, 0.0)), ("in", (0.0, 0.0, 4.0))):
        avg = spread_averages(g, quats, sigma, rng, photons, members=150)
        b, cc = fit_class_blur(avg, ref, quats, **g["fit"])
        assert b.shape == (8, 2) and cc.shape == (8, 11, 11) and np.all(np.isfinite(b))
        got[name] = np.median(b, axis=0)
    assert np.all(got["sharp"] <= 2.0), got
    assert np.all((0.7 * 3 * k <= got["even"]) & (got["even"] <= 1.25 * 3 * k)), got
    assert 0.7 * 4 * k <= got["out"][0] <= 1.25 * 4 * k and got["out"][1] <= 0.5 * got["out"][0], got
    assert 0.7 * 4 * k <= got["in"][1] <= 1.25 * 4 * k and got["in"][0] <= 0.5 * got["in"][1], got


def test_log_intensity_would_read_noisy_averages_as_sharp():
    """Why the fit correlates I / p and not log I: at 2e4 photons per average the log of few counts
    deepens the fringe minima, so the log CC prefers a sharper kernel than the linear one."""
    g = GEOMETRIES["65px_42nm"]
    rng = np.random.default_rng(3)
    quats = random_quaternions(8, rng)
    avg = spread_averages(g, quats, 4.0, rng, 2e4, members=150)
    lin, _ = fit_class_blur(avg, cube_reference(g["edge"]), quats, **g["fit"])
    log, _ = fit_class_blur(avg, cube_reference(g["edge"]), quats, normalise="log", **g["fit"])
    assert np.median(log) < 0.9 * np.median(lin), (np.median(log, 0), np.median(lin, 0))


def test_blur_at_fitted_orientations_and_the_data_set_value():
    """The whole path the stages take -- orientations fitted and refined, blur per average, one pair from the
    best-fitting averages -- on blurred cubes mixed with sharp spheres: the spheres (low gain, a shape the reference does
    not have) do not drag the data-set value, which is the cubes' spread."""
    g = GEOMETRIES["65px_42nm"]
    rng = np.random.default_rng(5)
    sigma = 3.0
    n_cubes, n_spheres = 40, 16
    cubes = spread_averages(g, random_quaternions(n_cubes, rng), sigma, rng, 1e5)
    spheres = spread_averages(g, random_quaternions(n_spheres, rng), 0.0, rng, 1e5, shape="sphere")
    m = n_cubes + n_spheres
    avg = AverageSet(np.concatenate([cubes.intensity, spheres.intensity]),
                     np.concatenate([cubes.weight, spheres.weight]), np.arange(m), np.zeros(m), np.arange(m),
                     np.full(m, 60.0), g["dq"], g["lam"])
    ref = cube_reference(g["edge"])
    zone = fundamental_orientations(16)[0]
    fit = fit_orientations(avg, ref, zone, **g["fit"])
    fit = refine_orientations(avg, ref, fit, zone, radius_deg=sampling_step_deg(16) / 2, iterations=4, **g["fit"])
    b, _ = fit_class_blur(avg, ref, fit.quaternion, **g["fit"])
    value, info = dataset_blur(b, fit.gain, np.ones(m, bool))
    assert info["n_used"] == m // 4 and info["gain_min"] > np.max(fit.gain[n_cubes:])
    # Out of plane the fitted orientations' own error adds to the members' spread (a few views of a cube
    # are fitted far off -- slices that look alike); that is blur relative to the orientation the VAE is
    # given, so it belongs in the value, within bounds.
    expect = sigma * np.sqrt(3.5)
    assert 0.7 * expect <= value[0] <= 1.5 * expect and 0.7 * expect <= value[1] <= 1.3 * expect, value
    # negative control: with only the spheres selected there is no orientation to measure a spread of
    # -- the value is whatever the mismatch gives, and it is not the cubes'
    sphere_value, _ = dataset_blur(b, fit.gain, np.arange(m) >= n_cubes)
    assert max(abs(a - c) for a, c in zip(sphere_value, value)) > 2.0, (sphere_value, value)


def test_the_grid_of_pairs_is_the_kernel_mean_slice():
    """fit_class_blur combines per-angle slice sums for every (out, in) pair; each entry of its CC table is
    the CC with the kernel's mean slice made directly: all 7 orientations sliced, intensities averaged,
    then normalised as a class average is."""
    from spicompute.orient.fit import _cc_per_average, fit_region, prepare_averages, reference_profile, transform

    def blurred_slices(ref, region, quats, blur, prof):
        kq = kernel_quaternions(quats, *blur)  # (M, 7, 4)
        mean = ref.evaluate(model_coordinates(region.q, kq.reshape(-1, 4))).reshape(len(kq), 7, -1).mean(1)
        return transform(mean, prof[region.rbin].astype(np.float32), "profile", np.float32(0.01)).astype(np.float32)

    g = GEOMETRIES["49px_30nm"]
    rng = np.random.default_rng(2)
    quats = random_quaternions(5, rng)
    avg = spread_averages(g, quats, 2.0, rng, 1e5, members=20)
    ref = cube_reference(g["edge"])
    _, cc = fit_class_blur(avg, ref, quats, grid_deg=(0.0, 3.0, 6.0, 9.0), **g["fit"])
    region = fit_region(avg, g["fit"]["r_min"], g["fit"]["r_max"])
    prep = prepare_averages(avg, region, "profile")
    prof = reference_profile(ref, region, quats)
    for i, j in ((0, 0), (1, 3), (3, 2)):
        direct = blurred_slices(ref, region, quats, ((0.0, 3.0, 6.0, 9.0)[i], (0.0, 3.0, 6.0, 9.0)[j]), prof)
        np.testing.assert_allclose(cc[:, i, j], _cc_per_average(prep, 0, 5, direct[:, None, :])[:, 0], atol=2e-6)


def test_refine_peak_finds_a_parabola_vertex_and_keeps_the_ends():
    grid = np.arange(0.0, 21.0, 2.0)
    values = np.stack([-(grid - 7.3) ** 2, -(grid - 0.0) ** 2 - grid, -(grid - 30.0) ** 2])
    np.testing.assert_allclose(refine_peak(grid, values), [7.3, 0.0, 20.0], atol=1e-9)


def test_kernel_is_the_vaes_forward_model():
    """The orient stage measures b with the rotations the VAE renders a class average with (lab frame)."""
    torch = pytest.importorskip("torch")
    from spicompute.vae.train import class_blur_rotations

    q0 = random_quaternions(1, np.random.default_rng(0))
    mats = rotation_matrices(kernel_quaternions(q0, 6.0, 2.5)[0])
    expect = torch.matmul(class_blur_rotations(6.0, 2.5), torch.from_numpy(rotation_matrices(q0)[0])).numpy()
    np.testing.assert_allclose(mats, expect, atol=1e-12)
    # in plane = about the beam: the in-plane turns keep a lab-frame q on the detector plane there
    turns = class_blur_rotations(6.0, 2.5).numpy()
    np.testing.assert_allclose(turns[5:, 2, :], [[0, 0, 1], [0, 0, 1]], atol=1e-12)
    assert class_blur_rotations(0.0, 0.0) is None and class_blur_rotations(0.0, 3.0) is not None


def test_dataset_blur_needs_enough_averages():
    with pytest.raises(InputError, match="class_blur_deg"):
        dataset_blur(np.ones((5, 2)), np.array([1.0, np.nan, np.nan, 2.0, 3.0]), np.ones(5, bool))
