"""Orientation sampling (600-cell), the cube group and the fundamental zone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spicompute.errors import ParameterError
from spicompute.orient.sampling import fundamental_orientations, fundamental_zone_mask, local_grid, misorientation_deg, nearest_misorientation_deg, reduce_to_zone, sample_orientations, sampling_step_deg
from spicompute.orient.quaternions import canonical, quat_multiply
from spicompute.orient.symmetry import cube_group, octahedral_matrices


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_sampling_count_unit_norm_and_distinct(n):
    q, w = sample_orientations(n)
    assert q.shape == (10 * (5 * n**3 + n), 4)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0)
    assert np.isclose(w.sum(), 1.0) and np.all(w > 0)
    # no two points are the same rotation (q ~ -q)
    dots = np.abs(q @ q.T) - 2 * np.eye(len(q))
    assert dots.max() < 1 - 1e-9


def test_sampling_is_uniform_enough():
    q, w = sample_orientations(4)
    # nearest-neighbour angles are all within a factor ~2 of each other
    ang = np.degrees(2 * np.arccos(np.clip(np.sort(np.abs(q @ q.T), axis=1)[:, -2], 0, 1)))
    assert ang.max() / ang.min() < 2.0
    # the mean rotation matrix of a uniform SO(3) sampling is zero
    mats = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()
    assert np.abs(np.average(mats, axis=0, weights=w)).max() < 0.02


def test_cube_group_is_a_group_of_cube_symmetries():
    g = cube_group()
    assert g.shape == (24, 4)
    prod = canonical(quat_multiply(g[:, None], g[None]).reshape(-1, 4))
    # closure: every product is in the group
    assert np.all(np.abs(prod @ g.T).max(axis=1) > 1 - 1e-9)
    mats = Rotation.from_quat(g[:, [1, 2, 3, 0]]).as_matrix()
    assert np.allclose(np.abs(mats).sum(axis=1), 1.0)  # signed permutations
    assert np.allclose(np.abs(g[3]), [1, 0, 0, 0])  # identity where the tie rule expects it
    assert len(octahedral_matrices()) == 48 and len(octahedral_matrices(proper_only=True)) == 24


def test_paper_count_at_num_div_20():
    q, w = fundamental_orientations(20)
    assert len(q) == 16407
    assert np.isclose(w.sum(), 1.0)
    assert len(fundamental_orientations(20, ties="all")[0]) == 16447
    assert np.all(q[:, 0] >= 0)


def test_every_rotation_is_covered_by_the_zone_within_one_step():
    n = 6
    full, _ = sample_orientations(n)
    kept, _ = fundamental_orientations(n)
    angle, _ = nearest_misorientation_deg(full, kept)
    assert angle.max() <= sampling_step_deg(n)
    # the zone holds about 1/24 of the sampling
    assert abs(len(kept) * 24 / len(full) - 1) < 0.05


def test_kept_rotations_are_not_equivalent_except_boundary_ties():
    n = 6
    full, _ = sample_orientations(n)
    kept_mask = fundamental_zone_mask(full)
    kept = full[kept_mask]
    g = cube_group()
    expanded = quat_multiply(kept[:, None], g[None]).reshape(-1, 4)
    w = np.abs(kept @ expanded.T).reshape(len(kept), len(kept), 24).max(axis=2)
    np.fill_diagonal(w, 0)
    i, j = np.nonzero(w > 1 - 1e-12)
    if len(i):
        # any equivalent pair must lie on the zone boundary: a tie between the identity and another g
        wq = np.abs(kept[np.unique(i)] @ (g * [1, -1, -1, -1]).T)
        top = np.sort(wq, axis=1)
        assert np.allclose(top[:, -1], top[:, -2], atol=1e-9)
    # reducing any rotation lands in the zone (first-min tie rule aside, d is minimal)
    rng = np.random.default_rng(0)
    r = canonical(rng.normal(size=(500, 4)))
    z = reduce_to_zone(r)
    assert np.allclose(misorientation_deg(r, z), 0, atol=1e-5)
    assert np.all(np.abs(z[:, 0])[:, None] >= np.abs(z @ (g * [1, -1, -1, -1]).T) - 1e-12)


def test_misorientation_modulo_group():
    rng = np.random.default_rng(1)
    q = canonical(rng.normal(size=(50, 4)))
    g = cube_group()[rng.integers(0, 24, 50)]
    assert np.allclose(misorientation_deg(q, quat_multiply(q, g)), 0, atol=1e-5)
    rot = Rotation.from_rotvec([[0, 0, np.radians(10)]])
    q10 = quat_multiply(q, rot.as_quat()[:, [3, 0, 1, 2]])
    assert np.allclose(misorientation_deg(q, q10), 10.0, atol=1e-6)
    # the largest misorientation in the cube's zone is 62.8 deg
    full, _ = sample_orientations(4)
    assert misorientation_deg(full[:1].repeat(len(full), 0), full).max() < 62.81


def test_local_grid_and_bad_num_div():
    c = canonical(np.array([[0.9, 0.1, 0.3, 0.2]]))
    grid = local_grid(c, 2.0, 1)
    assert grid.shape == (1, 27, 4)
    ang = misorientation_deg(np.repeat(c, 27, 0), grid[0], group=np.array([[1.0, 0, 0, 0]]))
    assert ang[13] < 1e-6 and ang.max() <= 2.0 * np.sqrt(3) + 1e-6
    axes = local_grid(c, 2.0, pattern="axes")[0]
    ang = misorientation_deg(np.repeat(c, 7, 0), axes, group=np.array([[1.0, 0, 0, 0]]))
    assert np.allclose(ang, [0, 2, 2, 2, 2, 2, 2], atol=1e-6)
    with pytest.raises(ParameterError):
        sample_orientations(0)
