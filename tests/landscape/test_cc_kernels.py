"""The CC matrix block kernels: the bf16 screen gives the float32 exhaustive result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spicompute.cli import main
from spicompute.landscape.cc_kernels import BF16_UNIT_ROUNDOFF, ScreenedBlockKernel, screen_window
from spicompute.landscape.commonlines import cc_band, cc_matrix, centre_unit, read_ccmatrix


def unit_lines(rng, m: int, n_lines: int, n_r: int, *, smooth: int = 3) -> np.ndarray:
    """(m, n_lines, n_r) centred unit lines: smooth random profiles sharing a common
    component per group of averages, so that pairs have structured, near-tied maxima."""
    kernel = np.ones(smooth) / smooth
    common = rng.normal(size=(4, n_r))
    x = rng.normal(size=(m, n_lines, n_r)) + 1.5 * common[rng.integers(0, 4, m)][:, None, :]
    x = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), -1, x)
    return centre_unit(x.astype(np.float32), np.ones_like(x, bool))


@pytest.fixture(scope="module")
def lines():
    rng = np.random.default_rng(3)
    x = unit_lines(rng, 37, 40, 24)
    # an average whose lines all anti-correlate with average 0's: a negative best CC
    x[1] = -np.repeat(x[0, :1], 40, axis=0) + 0.05 * rng.normal(size=(40, 24)).astype(np.float32)
    x[1] = centre_unit(x[1], np.ones_like(x[1], bool))
    x[0] = np.repeat(x[0, :1], 40, axis=0) + 0.05 * rng.normal(size=(40, 24)).astype(np.float32)
    x[0] = centre_unit(x[0], np.ones_like(x[0], bool))
    x[2, :10] = 0.0   # dead lines (a detector gap): they correlate with nothing
    return np.ascontiguousarray(x, np.float32)


@pytest.mark.parametrize("block,workers", [(1, 1), (5, 1), (5, 2), (None, 2)])
def test_screened_matrix_equals_the_float32_exhaustive_one(lines, block, workers):
    ref = cc_matrix(lines, block=block, backend="numpy", device="cpu", workers=workers)
    res = cc_matrix(lines, block=block, backend="bf16", device="cpu", workers=workers)
    assert ref.cc[0, 1] < -0.5   # the negative-maximum pair is in the test
    np.testing.assert_allclose(res.cc, ref.cc, atol=2e-6)
    iu = np.triu_indices(len(lines), 1)
    same = (res.angle_a[iu] == ref.angle_a[iu]) & (res.angle_b[iu] == ref.angle_b[iu])
    assert same.mean() >= 0.99, same.mean()
    # where an angle differs it is an exact tie: the chosen pair scores the same
    for i, j in zip(iu[0][~same], iu[1][~same]):
        assert abs(lines[i, res.angle_a[i, j]] @ lines[j, res.angle_b[i, j]] - ref.cc[i, j]) < 2e-6
    assert np.array_equal(res.angle_a, res.angle_b.T) and np.array_equal(res.cc, res.cc.T)
    assert 0 < res.rescored_fraction < 0.5
    assert ref.rescored_fraction is None


def test_the_window_bounds_the_bf16_error(lines):
    """Every bf16 product lies within half the window of its float32 value."""
    x = torch.from_numpy(lines.reshape(-1, lines.shape[-1]))
    approx = (x.bfloat16() @ x.bfloat16().T).float()
    exact = x.double() @ x.double().T
    kern = ScreenedBlockKernel(lines)
    err = (approx.double() - exact).abs().max().item()
    assert err <= kern.window / 2
    # the bound is not vacuous: within a factor ~10 of the worst error seen
    assert kern.window / 2 < 12 * err
    # the window grows with the lines' norm and the bf16 rounding
    assert screen_window(2.0, 0.01, 24) > screen_window(1.0, 0.01, 24) > screen_window(1.0, 0.0, 24)
    assert screen_window(1.0, 0.0, 24) >= 2 * BF16_UNIT_ROUNDOFF


def test_without_the_rescoring_or_the_window_the_screen_is_not_exact():
    """Negative controls on lines with many near-tied maxima (CC ~0.9): the bf16
    values alone miss the 2e-3 tolerance, and re-scoring only each pair's screened
    best lines (window 0) loses the true maximum on some pairs."""
    rng = np.random.default_rng(0)
    m, nl, nr = 24, 60, 32
    x = centre_unit((2.0 * rng.normal(size=(1, 1, nr)) + rng.normal(size=(m, nl, nr))).astype(np.float32),
                    np.ones((m, nl, nr), bool))
    ref = cc_band(x, 0, m, block=m, backend="numpy")
    iu = np.triu_indices(m, 1)
    flat = torch.from_numpy(x.reshape(m * nl, nr)).bfloat16()
    bf16_only = (flat @ flat.T).float().numpy().reshape(m, nl, m, nl).max(axis=(1, 3))
    assert np.abs(bf16_only[iu] - ref[0][iu]).max() > 2e-3
    kern = ScreenedBlockKernel(x)
    exact = cc_band(x, 0, m, block=m, kernel=kern)
    np.testing.assert_allclose(exact[0][iu], ref[0][iu], atol=2e-6)
    kern.window = 0.0
    blind = cc_band(x, 0, m, block=m, kernel=kern)
    loss = ref[0][iu] - blind[0][iu]
    assert loss.min() > -2e-6               # a subset can only score lower
    assert (loss > 1e-4).sum() >= 1, np.sort(loss)[-5:]


def test_the_stage_runs_the_screen_and_reports_the_work_left(tmp_path):
    from test_commonlines_stage import write_params

    from spicompute.io.averages import AverageSet, write_averages
    from test_commonlines import beamstop_valid, make_object, slices
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(7)
    imgs = slices(make_object(rng), Rotation.random(14, random_state=1)).astype(np.float32)
    weight = beamstop_valid(14).astype(np.float32)
    write_averages(tmp_path / "averages.h5", AverageSet(imgs * weight, weight, np.arange(14), np.zeros(14, int),
                                                        np.arange(14), rng.uniform(10, 50, 14), 0.04, 0.2066))
    out = {}
    for backend in ("numpy", "bf16"):
        params = write_params(tmp_path, ccmatrix__backend=backend)
        assert main(["ccmatrix", "--params", str(params), "-q", "--averages", str(tmp_path / "averages.h5"),
                     "--out", str(tmp_path / f"{backend}.h5"), "--metrics", str(tmp_path / f"{backend}.json")]) == 0
        out[backend] = (read_ccmatrix(tmp_path / f"{backend}.h5"), json.loads((tmp_path / f"{backend}.json").read_text()))
    np.testing.assert_allclose(out["bf16"][0].cc, out["numpy"][0].cc, atol=2e-6)
    assert out["bf16"][0].attrs["backend"] == "bf16"
    assert 0 < out["bf16"][1]["rescored_fraction"] < 1
    assert "rescored_fraction" not in out["numpy"][1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_screen_on_the_gpu_equals_the_cpu_exhaustive_matrix(lines):
    ref = cc_matrix(lines, backend="numpy", device="cpu")
    res = cc_matrix(lines, backend="bf16", device="cuda")
    np.testing.assert_allclose(res.cc, ref.cc, atol=1e-5)


def test_a_screen_that_saves_nothing_turns_exhaustive():
    """Flat, noise-like CCs (short lines, no shared structure) leave most lines as
    candidates: the kernel turns float32 exhaustive and the result is unchanged."""
    rng = np.random.default_rng(4)
    x = centre_unit(rng.normal(size=(60, 30, 4)).astype(np.float32), np.ones((60, 30, 4), bool))
    ref = cc_matrix(x, block=4, backend="numpy", workers=1)
    kern = ScreenedBlockKernel(x)
    band = cc_band(x, 0, 60, block=4, kernel=kern)
    assert kern.exhaustive and kern.rescored > 0.25 * kern.screened
    iu = np.triu_indices(60, 1)
    np.testing.assert_allclose(band[0][iu], ref.cc[iu], atol=2e-6)
    assert (band[1][iu] == ref.angle_a[iu]).mean() > 0.99
    # structured lines keep the screen
    kern = ScreenedBlockKernel(unit_lines(rng, 60, 30, 24))
    cc_band(kern.X.numpy().reshape(60, 30, 24), 0, 60, block=4, kernel=kern)
    assert not kern.exhaustive


def test_a_cpu_without_bf16_units_is_told(lines, monkeypatch, caplog):
    from spicompute.landscape import cc_kernels

    monkeypatch.setattr(cc_kernels, "cpu_has_bf16_units", lambda: False)
    with caplog.at_level("WARNING", logger="spicompute.ccmatrix"):
        res = cc_matrix(lines[:6], backend="bf16", block=3, workers=1)
    assert "no bf16 matrix units" in caplog.text
    np.testing.assert_allclose(res.cc, cc_matrix(lines[:6], backend="numpy", block=3).cc, atol=2e-6)
