"""Diffraction physics of the simulated shapes."""

import numpy as np
import pytest
from scipy.signal import argrelmin

from spicompute.shapes import (box_amplitude, cube_amplitude, cube_intensity, melt_half_size,
                               sphere_amplitude, sphere_intensity, superellipsoid_amplitude_grid,
                               superellipsoid_diameter, superellipsoid_exponent,
                               superellipsoid_intensity_volume, superellipsoid_volume_factor)
from spicompute.orient.slicing import VolumeSampler
from spicompute.orient.quaternions import random_quaternions, rotation_matrices


def _first_minima(profile, q, count):
    """Positions of the first minima, refined by a parabola through 3 samples.

    |F|^2 has double zeros, so it is locally parabolic around each minimum.
    """
    idx = argrelmin(profile)[0][:count]
    left, mid, right = profile[idx - 1], profile[idx], profile[idx + 1]
    shift = 0.5 * (left - right) / (left - 2 * mid + right)
    return q[idx] + shift * (q[1] - q[0])


def test_sphere_zeros_at_qr_4_493_and_7_725():
    radius = 21.0
    q = np.linspace(1e-4, 0.5, 200001)
    inten = sphere_intensity(np.stack([q, 0 * q, 0 * q], -1), radius)
    zeros = _first_minima(inten, q, 2) * radius
    np.testing.assert_allclose(zeros, [4.4934, 7.7253], atol=2e-3)
    assert inten[0] == pytest.approx((4 / 3 * np.pi * radius**3) ** 2, rel=1e-6)


def test_cube_zeros_along_face_normal_at_2_pi_m_over_a():
    a = 42.0
    q = np.linspace(1e-4, 0.8, 80001)
    along = cube_intensity(np.stack([q, 0 * q, 0 * q], -1), a)
    zeros = _first_minima(along, q, 4)
    np.testing.assert_allclose(zeros, 2 * np.pi * np.arange(1, 5) / a, atol=2e-4)
    assert along[argrelmin(along)[0][:4]].max() < 1e-8 * along[0]


def test_fft_volume_of_the_sphere_end_has_its_zeros_where_theory_says():
    # the melt family's sphere member, computed through the voxel/FFT route
    size, dq, radius = 96, 0.012, 21.0
    vol = superellipsoid_intensity_volume(size, dq, 2, radius, 2.0)
    c = size // 2
    profile = vol[c:, c, c]
    q = np.arange(len(profile)) * dq
    zeros = _first_minima(profile, q, 2) * radius
    np.testing.assert_allclose(zeros, [4.493, 7.725], atol=0.06)
    # forward scattering = volume^2
    assert vol[c, c, c] == pytest.approx((4 / 3 * np.pi * radius**3) ** 2, rel=0.03)


def test_melt_family_endpoints_and_volume_growth():
    assert np.isinf(superellipsoid_exponent(0.0)) and superellipsoid_exponent(1.0) == 2.0
    assert superellipsoid_volume_factor(2.0) == pytest.approx(4 / 3 * np.pi)
    a = 42.0
    assert 2 * melt_half_size(0.0, a, 0.1) == pytest.approx(a)
    r1 = melt_half_size(1.0, a, 0.1)
    assert 4 / 3 * np.pi * r1**3 == pytest.approx(1.1 * a**3)
    with pytest.raises(ValueError):
        superellipsoid_exponent(1.5)


def test_volume_slicing_matches_the_closed_form_at_rotated_q(rng):
    size, dq, a = 96, 0.01, 42.0
    axis = (np.arange(size) - size // 2) * dq
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    sampler = VolumeSampler(cube_intensity(grid, a), dq)
    q_lab = rng.uniform(-0.25, 0.25, (500, 3))
    quats = random_quaternions(7, rng)
    sliced = sampler.slices(q_lab, quats)
    mats = rotation_matrices(quats)
    exact = np.stack([cube_intensity(q_lab @ m, a) for m in mats])  # q @ R = R^T q
    assert np.corrcoef(sliced.ravel(), exact.ravel())[0, 1] > 0.9999
    # the opposite convention (R q instead of R^T q) fits clearly worse
    wrong = np.stack([cube_intensity(q_lab @ m.T, a) for m in mats])
    assert np.corrcoef(sliced.ravel(), wrong.ravel())[0, 1] < 0.999
    # and point sampling of the same points agrees with the batched slicer
    direct = sampler(np.einsum("pj,nji->npi", q_lab, mats))
    np.testing.assert_allclose(direct, sliced, rtol=1e-4, atol=1e-3 * sliced.max())


def _octant_q(n, dq):
    axis = np.arange(n) * dq
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)


def test_octant_quadrature_of_the_sphere_matches_the_closed_form():
    """p = 2 through the semi-analytic quadrature: amplitude (with its signs) and
    zeros at qR = 4.493, 7.725 along an axis and along the body diagonal."""
    radius, dq, n = 21.0, 0.012, 64
    grid = superellipsoid_amplitude_grid(n, dq, radius, 2.0)
    exact = sphere_amplitude(_octant_q(n, dq), radius)
    assert np.sqrt(np.mean((grid - exact) ** 2) / np.mean(exact**2)) < 1e-3
    assert np.abs(grid - exact).max() < 2e-4 * exact.max()
    assert grid[0, 0, 0] == pytest.approx(4 / 3 * np.pi * radius**3, rel=1e-3)
    q = np.arange(n) * dq
    axis_zeros = _sign_changes(grid[:, 0, 0], q, 2) * radius
    np.testing.assert_allclose(axis_zeros, [4.4934, 7.7253], atol=0.02)
    diag = np.array([grid[i, i, i] for i in range(n)])
    np.testing.assert_allclose(_sign_changes(diag, q * np.sqrt(3), 2) * radius,
                               [4.4934, 7.7253], atol=0.03)


def _sign_changes(amp, q, count):
    """First zero crossings of a real amplitude, by linear interpolation."""
    idx = np.nonzero(np.sign(amp[:-1]) * np.sign(amp[1:]) < 0)[0][:count]
    return q[idx] + (q[idx + 1] - q[idx]) * amp[idx] / (amp[idx] - amp[idx + 1])


def test_octant_quadrature_of_the_cube_is_its_closed_form():
    a, dq, n = 42.0, 0.015, 60
    grid = superellipsoid_amplitude_grid(n, dq, a / 2, np.inf, cells=64)
    exact = cube_amplitude(_octant_q(n, dq), a)
    assert np.abs(grid - exact).max() < 1e-5 * exact.max()
    # a box with unequal sides is the product of three sincs
    q = np.array([[0.1, 0.2, 0.05], [np.pi / 5, 0.0, 0.0]])
    amp = box_amplitude(q, (5.0, 10.0, 55.0))
    assert amp[0] == pytest.approx(8 * 5 * 10 * 55 * np.prod(np.sinc(q[0] * [5, 10, 55] / np.pi)))
    assert abs(amp[1]) < 1e-12 * 8 * 5 * 10 * 55  # zero at qx = pi / hx


def test_octant_quadrature_agrees_with_the_independent_fft_route():
    """A rounded cube (p = 4): quadrature amplitude^2 against the FFT of an
    anti-aliased voxel density (a different discretisation) in the low-q region."""
    half, size, dq = 22.0, 96, 0.012
    fft = superellipsoid_intensity_volume(size, dq, 2, half, 4.0)
    c = size // 2
    quad = superellipsoid_amplitude_grid(c, dq, half, 4.0) ** 2
    region = fft[c:, c:, c:][:30, :30, :30]
    ours = quad[:30, :30, :30]
    assert np.corrcoef(np.log(region.ravel() + 1e3), np.log(ours.ravel() + 1e3))[0, 1] > 0.995
    assert ours[0, 0, 0] == pytest.approx(region[0, 0, 0], rel=0.02)


def test_superellipsoid_diameter_is_the_farthest_surface_point(rng):
    a = 42.0
    assert superellipsoid_diameter(a / 2, np.inf) == pytest.approx(np.sqrt(3) * a)
    assert superellipsoid_diameter(21.0, 2.0) == pytest.approx(42.0)
    # p = 5: project random directions onto the surface, farthest point * 2
    p, r = 5.0, 20.0
    d = rng.standard_normal((200000, 3))
    surface = r * d / (np.abs(d) ** p).sum(1, keepdims=True) ** (1 / p)
    far = 2 * np.linalg.norm(surface, axis=1).max()
    assert far == pytest.approx(superellipsoid_diameter(r, p), rel=1e-3)
    assert far <= superellipsoid_diameter(r, p) * (1 + 1e-9)
