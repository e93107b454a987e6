"""Which averages hold an orientation (vae.isotropic_below): the centrosymmetric angular
contrast separates a cube's views from spheres on two geometries and two photon levels, shot
noise and non-centrosymmetric patterns add nothing to it, and a round average is sliced at a
random orientation that is its own whatever the rest of the set."""

from __future__ import annotations

import numpy as np
import pytest

from spicompute.geometry import grid_q
from spicompute.io.averages import AverageSet
from spicompute.orient.quaternions import random_quaternions, rotation_matrices
from spicompute.orient.slicing import VolumeSampler
from spicompute.vae.data import model_inputs, plan_preprocessing
from spicompute.vae.orientations import (angular_anisotropy, member_fluence, random_orientations,
                                         training_orientations, with_orientations)
from tests.melt_series import melt_volumes

THRESHOLD = 0.05   # vae.isotropic_below's default


def _averages(volumes, labels, quats, grid, dq, photons, rng, n_frames=100.0):
    """Poisson-sampled Ewald slices of ``volumes[labels[i]]`` at ``quats[i]`` as class averages."""
    q = grid_q(grid, dq, 0.2066).reshape(-1, 3)
    clean = np.stack([VolumeSampler(volumes[k], 0.03).slices(q, quats[i:i + 1])[0] for i, k in enumerate(labels)])
    qn = np.linalg.norm(q[:, :2], axis=1)
    valid = (qn >= 2 * dq) & (np.linalg.norm(q, axis=1) <= (volumes.shape[1] // 2 - 1) * 0.03)
    counts = rng.poisson(clean * (photons / clean[:, valid].sum(1))[:, None])
    m = len(labels)
    inten = (counts / n_frames * valid).reshape(m, grid, grid).astype(np.float32)
    weight = np.broadcast_to(valid.astype(np.float32), (m, grid * grid)).reshape(m, grid, grid)
    return AverageSet(inten, weight, np.arange(m), np.zeros(m), np.arange(m), np.full(m, n_frames), dq, 0.2066)


@pytest.mark.parametrize("grid,dq", [(41, 0.045), (65, 0.025)])
@pytest.mark.parametrize("photons", [3e4, 3e5])
def test_anisotropy_separates_cube_views_from_spheres(grid, dq, photons, rng):
    volumes = melt_volumes(np.array([0.0, 1.0]))
    m = 24
    labels = np.repeat([0, 1], m // 2)
    avg = _averages(volumes, labels, random_quaternions(m, rng), grid, dq, photons, rng)
    prep = plan_preprocessing(avg, np.arange(m), input_size=27, volume_size=27)
    a = model_inputs(avg, prep, random_quaternions(m, rng), np.ones(m)).anisotropy
    cube, sphere = a[labels == 0], a[labels == 1]
    assert np.isfinite(a).all()
    assert (sphere < THRESHOLD).all(), sphere
    assert np.mean(cube >= THRESHOLD) >= 0.9, cube
    assert np.median(cube) >= 5 * max(np.median(sphere), THRESHOLD / 10)


def test_shot_noise_and_non_centrosymmetric_patterns_add_nothing(rng):
    n = 31
    axis = np.arange(n) - n // 2
    r = np.hypot(axis[:, None], axis[None, :])
    phi = np.arctan2(axis[None, :], axis[:, None])
    observed = np.broadcast_to((r >= 2) & (r <= 14), (6, n, n)).copy()
    rings = 1.0 + 0.8 * np.cos(0.9 * r) ** 2
    images = np.stack([
        rng.poisson(200 * rings) / 200,                        # round + shot noise
        rng.poisson(5 * rings) / 5,                            # round + heavy shot noise
        rings * (1 + 0.5 * np.cos(phi)),                       # m = 1: odd under q -> -q
        rings * (1 + 0.5 * np.cos(3 * phi)),                   # m = 3: odd
        rings * (1 + 0.5 * np.cos(2 * phi)),                   # m = 2: centrosymmetric
        rings * (1 + 0.5 * np.cos(4 * phi)),                   # m = 4: centrosymmetric
    ])
    a = angular_anisotropy(images * observed, observed)
    assert abs(a[0]) < 0.01 and abs(a[1]) < 0.03, a
    assert a[2] < 0 and a[3] < 0, a          # anti-correlated across the origin
    assert a[4] > 0.05 and a[5] > 0.05, a    # 0.5 cos(m phi) holds an eighth of the power
    # the even grid has one row and column without a Friedel partner; the measure is unchanged
    even = np.pad(images[4], ((1, 0), (1, 0)))
    obs_even = np.pad(observed[4], ((1, 0), (1, 0)))
    assert angular_anisotropy(even[None], obs_even[None])[0] == pytest.approx(a[4], rel=1e-9)
    # an average without observed Friedel pairs has no measure
    half = observed[:1].copy()
    half[:, : n // 2 + 1] = False
    assert np.isnan(angular_anisotropy(images[:1] * half, half)[0])


def test_random_orientations_are_each_averages_own_and_uniform():
    ids = np.arange(3000)
    q = random_orientations(ids, seed=7)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-12)
    # the same average gets the same orientation in any subset and order; another seed another one
    np.testing.assert_array_equal(random_orientations(ids[[2500, 3, 17]], seed=7), q[[2500, 3, 17]])
    assert not np.allclose(random_orientations(ids[:5], seed=8), q[:5])
    # uniform on SO(3): the mean rotation matrix vanishes, the beam axis covers the sphere evenly
    rot = rotation_matrices(q)
    assert np.abs(rot.mean(0)).max() < 0.05
    beam = rot[:, 2, :]   # R^T z: the beam direction in the particle frame
    assert np.abs(np.mean(np.abs(beam), axis=0) - 0.5).max() < 0.03


def test_only_round_averages_are_reoriented_and_the_inputs_follow(rng):
    avg = _averages(melt_volumes(np.array([0.0, 1.0])), np.array([0, 1, 0, 1]), random_quaternions(4, rng),
                    41, 0.045, 3e5, rng)
    prep = plan_preprocessing(avg, np.arange(4), input_size=27, volume_size=27)
    fitted_q = random_quaternions(4, rng)
    gain = np.array([1.5, 1.1, 1.4, 1.05])
    inputs = model_inputs(avg, prep, fitted_q, gain)
    used, fitted = training_orientations(fitted_q, inputs.anisotropy, THRESHOLD, avg.average_id, seed=0)
    np.testing.assert_array_equal(fitted, [True, False, True, False])
    np.testing.assert_array_equal(used[fitted], fitted_q[fitted])
    np.testing.assert_allclose(used[~fitted], random_orientations(avg.average_id[~fitted], 0))
    moved = with_orientations(inputs, used)
    np.testing.assert_allclose(moved.rotations, rotation_matrices(used), atol=1e-6)
    # the encoder is told the orientation the average is sliced at; the log gain is kept
    np.testing.assert_allclose(moved.condition[:, :4], used, atol=1e-6)
    np.testing.assert_allclose(moved.condition[:, 4], np.log(gain), atol=1e-6)
    np.testing.assert_array_equal(moved.x, inputs.x)
    # 0 keeps every fitted orientation; NaN (no measure) keeps the fitted one
    assert training_orientations(fitted_q, inputs.anisotropy, 0.0, avg.average_id, 0)[1].all()
    assert training_orientations(fitted_q, np.full(4, np.nan), THRESHOLD, avg.average_id, 0)[1].all()


def test_round_classes_of_weak_hits_keep_their_fitted_orientation():
    """isotropic_min_fluence: a round average whose members are weak hits (fluence below the given
    share of the trained averages' median) keeps its fitted orientation; so does one without a
    fluence; a bright round one is sliced at random."""
    m, n = 5, 9
    n_frames = np.array([100.0, 100.0, 50.0, 80.0, 0.0])
    per_frame = np.array([1.0, 0.5, 1.1, 0.95, 1.0])   # members' mean fluence
    weight = np.zeros((m, n, n))
    weight[:, 2:7, 2:7] = (per_frame * n_frames)[:, None, None]
    weight[0, 4, 4] = 0.0   # a pixel never observed does not count
    flu = member_fluence(weight, n_frames)
    np.testing.assert_allclose(flu[:4], per_frame[:4])
    assert np.isnan(flu[4])
    q = random_quaternions(m, np.random.default_rng(0))
    round_ = np.zeros(m)   # every average round
    _, fitted = training_orientations(q, round_, THRESHOLD, np.arange(m), 0, flu, 0.9)
    # median of the finite fluences 0.975: 0.5 is a weak-hit class, NaN has no fluence
    np.testing.assert_array_equal(fitted, [False, True, False, False, True])
    # the median over the reference (trained) averages only
    _, fitted = training_orientations(q, round_, THRESHOLD, np.arange(m), 0, flu, 0.9, reference=[2])
    np.testing.assert_array_equal(fitted, [False, True, False, True, True])   # 0.95 < 0.9 x 1.1
    # 0 switches the fluence rule off
    assert not training_orientations(q, round_, THRESHOLD, np.arange(m), 0, flu, 0.0)[1].any()
