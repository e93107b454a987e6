"""Common-line CC matrix: geometry, normalisation, blocking, symmetry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from spicompute.landscape.commonlines import (
    auto_radius_range,
    cc_matrix,
    cc_matrix_dense,
    centre_unit,
    line_profile,
    masked_pearson,
    normalise_lines,
    polar_lines,
)

SIZE = 97
DQ = 0.04  # rad/nm per grid step


def cloud_intensity(q: np.ndarray, points: np.ndarray, blob_nm: float = 1.5) -> np.ndarray:
    """|sum_j exp(-i q.r_j)|^2 of Gaussian blobs at ``points`` (closed form).

    q : (..., 3) rad/nm; points : (n, 3) nm.  Real density -> I(q) = I(-q).
    """
    phase = q @ points.T  # (..., n)
    amp = np.exp(-1j * phase).sum(-1)
    return np.abs(amp) ** 2 * np.exp(-(np.linalg.norm(q, axis=-1) * blob_nm) ** 2)


def make_object(rng: np.random.Generator, n: int = 20, extent_nm: float = 30.0) -> np.ndarray:
    return rng.normal(scale=extent_nm / 2, size=(n, 3))


def flat_grid(size: int = SIZE, dq: float = DQ) -> np.ndarray:
    c = size // 2
    axis = (np.arange(size) - c) * dq
    qy, qx = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([qx, qy, np.zeros_like(qx)], -1)


def slices(points: np.ndarray, rotations: Rotation) -> np.ndarray:
    """(N, L, L) small-angle slices: frame n samples I_model(R_n^T q)."""
    q = flat_grid().reshape(-1, 3)
    mats = rotations.as_matrix()  # (N, 3, 3), model -> lab
    q_model = np.einsum("pj,nji->npi", q, mats)  # R^T q for row vectors
    return cloud_intensity(q_model, points).reshape(len(mats), SIZE, SIZE)


def true_common_line(rot_a: Rotation, rot_b: Rotation) -> tuple[np.ndarray, np.ndarray]:
    """Angles (mod pi) of the common line in frames a and b, radians.

    In model coordinates slice n is the plane with normal R_n^T z; the common
    line has direction d = (R_a^T z) x (R_b^T z), which frame n sees at R_n d.
    """
    z = np.array([0.0, 0.0, 1.0])
    na = rot_a.inv().apply(z)
    nb = rot_b.inv().apply(z)
    d = np.cross(na, nb)
    da, db = rot_a.apply(d), rot_b.apply(d)
    return (np.arctan2(da[:, 1], da[:, 0]) % np.pi, np.arctan2(db[:, 1], db[:, 0]) % np.pi)


def beamstop_valid(n: int, size: int = SIZE, radius: float = 3.0) -> np.ndarray:
    c = size // 2
    yy, xx = np.mgrid[:size, :size] - c
    return np.broadcast_to(np.hypot(yy, xx) > radius, (n, size, size)).copy()


@pytest.fixture(scope="module")
def one_object():
    rng = np.random.default_rng(1)
    points = make_object(rng)
    rots = Rotation.random(40, random_state=2)
    images = slices(points, rots)
    return images, rots


def lines_of(images, valid=None, n_lines=180, method="radial", radii=None):
    if valid is None:
        valid = beamstop_valid(len(images))
    if radii is None:
        r0, r1 = auto_radius_range(valid)
        radii = np.arange(r0, r1 + 1, dtype=float)
    raw, rv = polar_lines(images, valid, radii, n_lines)
    return normalise_lines(raw, rv, method), raw, rv, radii


def circular_bin_distance(a, b, n):
    d = np.abs(a - b) % n
    return np.minimum(d, n - d)


def test_best_angle_pair_matches_true_common_line(one_object):
    images, rots = one_object
    n_lines = 180
    lines, *_ = lines_of(images, n_lines=n_lines)
    res = cc_matrix(lines, block=7)
    m = len(images)
    i, j = np.triu_indices(m, 1)
    ta, tb = true_common_line(rots[i], rots[j])
    step = np.pi / n_lines
    ka, kb = np.round(ta / step) % n_lines, np.round(tb / step) % n_lines
    ok = ((circular_bin_distance(res.angle_a[i, j], ka, n_lines) <= 2)
          & (circular_bin_distance(res.angle_b[i, j], kb, n_lines) <= 2))
    assert ok.mean() >= 0.95, f"only {ok.mean():.3f} of pairs within 2 bins"
    # the same object's common lines correlate well
    assert np.median(res.cc[i, j]) > 0.9


def test_same_object_scores_higher_than_different_objects(one_object):
    images_a, _ = one_object
    rng = np.random.default_rng(11)
    other = make_object(rng)
    images_b = slices(other, Rotation.random(40, random_state=12))
    images = np.concatenate([images_a, images_b])
    lines, *_ = lines_of(images)
    cc = cc_matrix(lines).cc
    label = np.repeat([0, 1], 40)
    i, j = np.triu_indices(len(images), 1)
    same = cc[i, j][label[i] == label[j]]
    diff = cc[i, j][label[i] != label[j]]
    assert np.median(same) > np.median(diff) + 0.05
    # rank statistic: a random same pair beats a random different pair
    auc = (same[:, None] > diff[None, :]).mean()
    assert auc > 0.85, auc
    # each average's mean CC is higher with its own object
    mean_same = np.array([cc[k, label == label[k]].sum() - 1 for k in range(80)]) / 39
    mean_diff = np.array([cc[k, label != label[k]].mean() for k in range(80)])
    assert (mean_same > mean_diff).mean() > 0.95


def test_symmetric_unit_diagonal_and_blocked_equals_unblocked(one_object):
    images, _ = one_object
    lines, *_ = lines_of(images[:23], n_lines=60)
    ref = cc_matrix_dense(lines)
    for block in (1, 4, 23, 50):
        for backend in ("torch", "numpy"):
            res = cc_matrix(lines, block=block, backend=backend, device="cpu")
            assert np.array_equal(res.cc, res.cc.T)
            assert np.all(np.diag(res.cc) == 1.0)
            np.testing.assert_allclose(res.cc, ref.cc, atol=2e-6)
            assert np.array_equal(res.angle_a, res.angle_b.T)
            iu = np.triu_indices(23, 1)
            agree = (res.angle_a[iu] == ref.angle_a[iu]) & (res.angle_b[iu] == ref.angle_b[iu])
            assert agree.mean() > 0.98
    # the best pair's correlation is what the argmax points to
    res = cc_matrix(lines, block=5)
    i, j = 3, 17
    dot = lines[i, res.angle_a[i, j]] @ lines[j, res.angle_b[i, j]]
    assert abs(dot - res.cc[i, j]) < 1e-5


def test_radial_normalisation_does_not_saturate_raw_like_data(one_object):
    images, _ = one_object
    # raw-intensity-like: a steep sphere-like fall-off times the object's speckles
    q = np.linalg.norm(flat_grid(), axis=-1)
    raw = images * 1e4 / (1 + (q / 0.15) ** 4)
    rng = np.random.default_rng(5)
    other = slices(make_object(rng), Rotation.random(20, random_state=6)) / (1 + (q / 0.15) ** 4) * 1e4
    data = np.concatenate([raw[:20], other])
    off = ~np.eye(40, dtype=bool)
    plain = cc_matrix(lines_of(data, method="none")[0]).cc[off]
    default = cc_matrix(lines_of(data)[0]).cc[off]
    assert plain.min() > 0.9  # what a plain Pearson CC does: everything looks alike
    assert default.max() - default.min() > 0.1
    assert np.percentile(default, 95) - np.percentile(default, 5) > 0.1
    for method in ("log", "line-ratio"):  # the alternatives spread too
        other_cc = cc_matrix(lines_of(data, method=method)[0]).cc[off]
        assert other_cc.max() - other_cc.min() > 0.1


def test_zero_filled_normalisation_approximates_masked_pearson(one_object):
    images, _ = one_object
    m = 6
    valid = beamstop_valid(m)
    c = SIZE // 2
    # panel-gap-like bands, shifted per average (gaps not fully filled)
    for k in range(m):
        valid[k, c + 8 + k:c + 15 + k, :] = False
        valid[k, :, c - 24 + 2 * k:c - 17 + 2 * k] = False
    radii = np.arange(4, 47, dtype=float)
    raw, rv = polar_lines(images[:m], valid, radii, 90)
    assert rv.mean() < 0.985  # masking is in play
    x = raw / line_profile(raw, rv).astype(np.float32)
    normed = centre_unit(x, rv)
    for a, b in ((0, 1), (2, 3), (4, 5)):
        approx = normed[a] @ normed[b].T
        exact = masked_pearson(x[a], rv[a], x[b], rv[b])
        diff = np.abs(approx - exact)
        # most line pairs lose no common bin: exact there; the rest are close
        assert np.median(diff) < 1e-4
        assert np.percentile(diff, 90) < 0.02
        assert np.percentile(diff, 99) < 0.12
        # what the CC matrix keeps: the best pair and its value
        assert abs(approx.max() - exact.max()) < 0.05
        ka, kb = np.unravel_index(approx.argmax(), approx.shape)
        assert exact[ka, kb] > exact.max() - 0.01


def test_auto_radius_range_skips_beamstop_and_corners():
    valid = beamstop_valid(3, radius=5.0)
    r0, r1 = auto_radius_range(valid)
    assert 6 <= r0 <= 8
    assert r1 == SIZE // 2 - 1


def test_dead_lines_correlate_with_nothing():
    x = np.zeros((2, 4, 10), np.float32)
    x[0] = np.arange(10)
    x[1] = 5.0  # constant -> no variance
    out = centre_unit(x, np.ones_like(x, bool))
    assert np.allclose(np.linalg.norm(out[0], axis=-1), 1)
    assert np.all(out[1] == 0)
    res = cc_matrix(out, block=1)
    assert res.cc[0, 1] == 0.0


def test_bad_parameters():
    from spicompute.errors import ParameterError

    with pytest.raises(ParameterError, match="normalisation"):
        normalise_lines(np.ones((1, 2, 3)), np.ones((1, 2, 3), bool), "bogus")
    with pytest.raises(ParameterError, match="backend"):
        cc_matrix(np.ones((2, 2, 3), np.float32), backend="cupy")


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_equals_cpu(one_object):
    images, _ = one_object
    lines, *_ = lines_of(images, n_lines=90)
    cpu = cc_matrix(lines, block=6, backend="numpy")
    gpu = cc_matrix(lines, backend="torch", device="cuda")
    np.testing.assert_allclose(gpu.cc, cpu.cc, atol=1e-5)
    iu = np.triu_indices(len(lines), 1)
    assert (gpu.angle_a[iu] == cpu.angle_a[iu]).mean() > 0.98
