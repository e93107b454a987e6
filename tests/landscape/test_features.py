"""Rotation-invariant features: invariance, Friedel/resolution order selection, scale."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spicompute.errors import ParameterError
from spicompute.landscape.features import (
    FeatureParams,
    Standardizer,
    feature_index,
    order_mask,
    rotation_invariant_features,
)

SIZE = 65
PARAMS = FeatureParams(r_min=3, r_max=28, n_theta=180, order_a=10, order_b=0.25, log=False)


def pattern(angle_deg: float = 0.0, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A smooth, anisotropic, Friedel-symmetric pattern rotated in-plane by ``angle_deg``.

    Sum of elongated Gaussians at +-p_j (centrosymmetric) on a slow radial decay,
    evaluated analytically on the rotated coordinates (no interpolation).
    """
    rng = np.random.default_rng(seed)
    c = size // 2
    y, x = np.mgrid[0:size, 0:size] - c
    a = np.radians(angle_deg)
    xr = np.cos(a) * x + np.sin(a) * y  # coordinates in the pattern's own frame
    yr = -np.sin(a) * x + np.cos(a) * y
    img = 50.0 * np.exp(-(xr**2 + yr**2) / (2 * 12.0**2))
    for _ in range(6):
        p = rng.uniform(-20, 20, 2)
        s = rng.uniform(1.5, 4.0, 2)
        for sign in (1, -1):
            img += 20 * np.exp(-((xr - sign * p[0]) ** 2 / (2 * s[0] ** 2) + (yr - sign * p[1]) ** 2 / (2 * s[1] ** 2)))
    return img


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(a)


def test_order_selection_drops_odd_and_high_orders():
    mask = order_mask(PARAMS)
    r, m = feature_index(PARAMS)
    assert np.all(m % 2 == 0)
    assert np.all(m < PARAMS.order_a + PARAMS.order_b * r)
    # more orders survive at larger radii (speckle-resolution limit grows with r)
    assert mask[-1].sum() > mask[0].sum()
    # the paper's setting: 180 bins, radii 20..149, m < 10 + r/4, even m
    paper = FeatureParams(r_min=20, r_max=149)
    assert order_mask(paper).sum() == 2080


def test_features_invariant_to_exact_grid_rotations():
    img = pattern()
    stack = np.stack([img, np.rot90(img, 1), np.rot90(img, 2), np.rot90(img, 3)])
    f = rotation_invariant_features(stack, None, PARAMS)
    for k in range(1, 4):  # 90 deg = 45 azimuth bins: a circular shift of the polar rows
        assert rel(f[0], f[k]) <= 1e-3
    flog = rotation_invariant_features(stack, None, FeatureParams(**{**PARAMS.to_dict(), "log": True}))
    assert np.abs(flog[0] - flog[1]).max() <= 1e-3 * np.abs(flog[0]).max()


def test_features_invariant_to_arbitrary_rotations_within_interpolation_error():
    base = pattern(0.0)
    angles = [2.0, 17.0, 33.3, 61.0, 145.7]  # bin multiples and arbitrary angles
    rotated = np.stack([pattern(a) for a in angles])
    f0 = rotation_invariant_features(base[None], None, PARAMS)[0]
    f = rotation_invariant_features(rotated, None, PARAMS)
    errs = [rel(f0, fi) for fi in f]
    other = rotation_invariant_features(pattern(0.0, seed=5)[None], None, PARAMS)[0]
    # analytic rotations differ only by the bilinear resampling error (~1e-3 here)...
    assert max(errs) < 2e-3
    # ...which is tiny compared with the difference between two different patterns
    assert max(errs) < 0.02 * rel(f0, other)
    # an image rotated by interpolation (scipy.ndimage.rotate, bilinear) is also close
    rot = ndimage.rotate(base, 33.3, reshape=False, order=1)
    fr = rotation_invariant_features(rot[None], None, PARAMS)[0]
    assert rel(f0, fr) < 5e-3 < rel(f0, other)


def test_features_ignore_scale_and_fill_masked_bins():
    img = pattern()
    f = rotation_invariant_features(np.stack([img, 7.5 * img]), None, PARAMS)
    assert rel(f[0], f[1]) < 1e-5
    valid = np.ones((1, SIZE, SIZE), bool)
    valid[0, SIZE // 2 - 1:SIZE // 2 + 2, :] = False  # a horizontal gap
    holed = np.where(valid[0], img, 0.0)[None]
    fm = rotation_invariant_features(holed, valid, PARAMS)[0]
    f_ignored = rotation_invariant_features(holed, None, PARAMS)[0]
    assert rel(f[0], fm) < rel(f[0], f_ignored)


def test_standardizer_and_bad_parameters():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 5))
    s = Standardizer.fit(x)
    z = s.transform(x)
    assert np.allclose(z.mean(0), 0, atol=1e-6) and np.allclose(z.std(0), 1, atol=1e-5)
    assert np.allclose(s.inverse(z), x, atol=1e-5)
    assert np.allclose(Standardizer.from_dict(s.to_dict()).mean, s.mean)
    with pytest.raises(ParameterError):
        rotation_invariant_features(np.zeros((1, 33, 33)), None, FeatureParams(r_min=2, r_max=40))
    with pytest.raises(ParameterError):
        FeatureParams(n_theta=181).validate()
