"""Photon conversion and lit-pixel hit finding (spicompute.ingest.hitfinding)."""

import numpy as np
import pytest

from spicompute.errors import ParameterError
from spicompute.ingest.hitfinding import auto_threshold, lit_histogram, lit_pixels, resolve_threshold, to_photons


@pytest.mark.parametrize("energy_kev", [6.0, 9.3])
@pytest.mark.parametrize("t", [0.5, 0.7, 1.0])
def test_integer_photons_conserved(energy_kev, t):
    rng = np.random.default_rng(1)
    n = rng.poisson(0.3, size=(20, 16, 64, 32)).astype(np.int32)
    kev = n.astype(np.float32) * np.float32(energy_kev)
    out = to_photons(kev, energy_kev, threshold=t)
    np.testing.assert_array_equal(out, n)
    assert out.sum() == n.sum()


def test_rounding_threshold_and_bad_values():
    e = 6.0
    x = np.array([0.2, 0.49, 0.5, 0.7, 1.49, 1.5, -3.0, np.nan, np.inf]) * e
    np.testing.assert_array_equal(to_photons(x, e, 0.5), [0, 0, 1, 1, 1, 2, 0, 0, 0])
    np.testing.assert_array_equal(to_photons(x, e, 0.75), [0, 0, 0, 0, 1, 1, 0, 0, 0])
    # ADU with a gain, and a mask
    adu = np.array([[45.0, 90.0, 10.0]])
    np.testing.assert_array_equal(to_photons(adu, 45.0, 0.5, mask=[[True, False, True]]), [[1, 0, 0]])
    with pytest.raises(ParameterError):
        to_photons(x, 0.0)
    with pytest.raises(ParameterError):
        to_photons(x, e, threshold=0.0)


@pytest.mark.parametrize("bg_mean", [2e-4, 2e-3])        # background photons / pixel
@pytest.mark.parametrize("hit_photons", [150, 1500])      # photons in a hit
def test_hits_recovered_with_few_false_positives(bg_mean, hit_photons):
    rng = np.random.default_rng(7)
    n_frames, P = 2000, 16 * 64 * 32
    is_hit = rng.random(n_frames) < 0.07                  # paper: 7.2 % hit ratio
    lit = np.empty(n_frames, dtype=np.int64)
    # Speckle-like hit: photons concentrated near a "beam centre" (low pixel indices).
    for i in range(n_frames):
        frame = rng.poisson(bg_mean, size=P)
        if is_hit[i]:
            fluence = rng.uniform(0.5, 1.0)
            idx = np.minimum(rng.exponential(P / 8, size=rng.poisson(hit_photons * fluence)).astype(int), P - 1)
            np.add.at(frame, idx, 1)
        lit[i] = lit_pixels(frame[None])[0]
    thr = resolve_threshold(lit, "auto", 5.0)
    found = lit > thr
    recall = (found & is_hit).sum() / is_hit.sum()
    fp = (found & ~is_hit).sum() / (~is_hit).sum()
    assert recall >= 0.99, (recall, thr)
    assert fp < 0.01, (fp, thr)


def test_threshold_rules():
    lit = np.array([0] * 90 + [200] * 10)
    assert auto_threshold(lit, 5.0) == pytest.approx(5.0)    # zero MAD -> floor of 1
    assert resolve_threshold(lit, 12) == 12.0
    with pytest.raises(ParameterError):
        resolve_threshold(lit, -1)
    with pytest.raises(ParameterError):
        resolve_threshold(lit, "many")
    edges, counts = lit_histogram(lit, 5.0, bins=10)
    assert counts.sum() == lit.size and edges[-1] >= 200
