"""The octahedral group Oh on voxel grids: group properties and exact symmetrisation."""

import numpy as np
import pytest
import torch

from spicompute.orient.symmetry import apply_operation, oh_matrices, oh_operations, symmetrize_oh, octahedral_matrices


def test_48_distinct_operations_form_a_group():
    mats = oh_matrices()
    assert mats.shape == (48, 3, 3)
    keys = {m.astype(int).tobytes() for m in mats}
    assert len(keys) == 48
    for a in mats:  # closure under composition, inverse present
        for b in mats:
            assert (a @ b).astype(int).tobytes() in keys
        assert np.linalg.inv(a).round().astype(int).tobytes() in keys
    assert np.isclose(sorted(np.linalg.det(mats)), [-1] * 24 + [1] * 24).all()
    # the same set as the orientation code's signed permutations
    assert keys == {m.astype(int).tobytes() for m in octahedral_matrices()}


def test_apply_operation_matches_the_matrix_on_voxel_coordinates(rng):
    size = 7
    c = size // 2
    vol = rng.random((size, size, size))
    for perm, signs in oh_operations():
        m = np.zeros((3, 3))
        m[np.arange(3), list(perm)] = signs
        out = apply_operation(vol, perm, signs)
        for _ in range(5):
            x = rng.integers(-c, c + 1, 3)
            w = (m @ x).astype(int)  # V'(M x) = V(x)
            assert out[tuple(w + c)] == vol[tuple(x + c)]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_symmetrisation_is_invariant_and_idempotent(rng, backend):
    vol = rng.random((2, 9, 9, 9)).astype(np.float32)
    v = torch.from_numpy(vol) if backend == "torch" else vol
    sym = symmetrize_oh(v)
    sym_np = sym.numpy() if backend == "torch" else sym
    for perm, signs in oh_operations():
        img = apply_operation(sym, perm, signs)
        img = img.numpy() if backend == "torch" else img
        np.testing.assert_allclose(img, sym_np, atol=1e-6)
    again = symmetrize_oh(sym)
    np.testing.assert_allclose(again.numpy() if backend == "torch" else again, sym_np, atol=1e-6)
    # it is the mean over the 48 images of the input
    mean = np.mean([apply_operation(vol, p, s) for p, s in oh_operations()], axis=0)
    np.testing.assert_allclose(sym_np, mean, atol=1e-6)
    # Friedel: inversion is in Oh
    np.testing.assert_allclose(sym_np, sym_np[:, ::-1, ::-1, ::-1], atol=1e-6)


def test_symmetrisation_needs_an_odd_cube():
    with pytest.raises(ValueError, match="odd"):
        symmetrize_oh(np.zeros((8, 8, 8)))


def test_symmetrisation_is_differentiable():
    v = torch.rand(1, 7, 7, 7, requires_grad=True)
    symmetrize_oh(v)[0, 4, 5, 6].backward()
    # the gradient spreads evenly over the 48-voxel orbit of q = (1, 2, 3) under Oh
    assert (v.grad > 0).sum() == 48
    assert torch.allclose(v.grad[v.grad > 0], torch.tensor(1 / 48))
