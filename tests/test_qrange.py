"""The usable q-range resolved from the averages: geometry, beamstop, photon level."""

import numpy as np
import pytest

from spicompute.errors import InputError, ParameterError
from spicompute.qrange import radial_profile, resolve_q_range
from spicompute.landscape.regressor import split_by_runs
from tests.melt_series import melt_averages


@pytest.mark.parametrize("grid,dq", [(41, 0.045), (65, 0.02)])
def test_auto_range_follows_geometry_and_photons(grid, dq):
    bright, *_ = melt_averages(16, seed=3, grid=grid, dq_nm=dq, photons=2e6, beamstop_px=3)
    dim, *_ = melt_averages(16, seed=3, grid=grid, dq_nm=dq, photons=2e4, beamstop_px=3)
    qb, qd = resolve_q_range(bright), resolve_q_range(dim)
    radius = (grid // 2) * dq
    for qr in (qb, qd):
        assert qr.q_min_nm == pytest.approx(3 * dq, abs=dq)  # the beamstop edge
        assert qr.q_max_nm <= radius + 1e-9
        assert set(qr.limits) == {"grid_radius_nm", "coverage_nm", "counts_nm"}
    # 100x fewer photons: the signal limit moves in, and beyond it a typical average has < 1 photon/pixel
    assert qd.q_max_nm < qb.q_max_nm
    q, prof, _ = radial_profile(dim)
    beyond = (q > qd.q_max_nm + dq) & np.isfinite(prof)
    assert np.all(prof[beyond][:3] * 200 < 1.0)


@pytest.mark.parametrize("grid,dq", [(41, 0.045), (65, 0.02)])
@pytest.mark.parametrize("floor_counts", [3.0, 10.0])
def test_background_floor_is_not_signal(grid, dq, floor_counts, monkeypatch):
    """A flat residual background (counts per grid point per average) never carries q_max out:
    the limit stays where the particle's own counts still reach the floor."""
    import spicompute.qrange as qrange

    dim, *_ = melt_averages(16, seed=3, grid=grid, dq_nm=dq, photons=2e4, beamstop_px=3)
    clean = resolve_q_range(dim)
    rng = np.random.default_rng(0)
    noisy_counts = rng.poisson(dim.intensity * 200 + floor_counts) * (dim.weight > 0)
    with_floor = type(dim)(**{**vars(dim), "intensity": (noisy_counts / 200).astype(np.float32)})
    floored = resolve_q_range(with_floor)
    assert floored.floor * 200 == pytest.approx(floor_counts, rel=0.15)
    assert floored.q_max_nm <= clean.q_max_nm + dq
    q, prof, _ = radial_profile(dim)   # the particle alone
    at_limit = np.argmin(np.abs(q - floored.q_max_nm))
    assert prof[at_limit] * 200 >= 0.5 * floor_counts
    # negative control: counted as signal, the floor carries the range to the detector edge
    monkeypatch.setattr(qrange, "signal_floor", lambda *a, **k: 0.0)
    naive = resolve_q_range(with_floor)
    assert naive.q_max_nm > 1.3 * clean.q_max_nm


def test_a_faint_floor_changes_nothing():
    """Below half of min_counts the floor leaves the counts rule as it is."""
    dim, *_ = melt_averages(16, seed=3, photons=2e4, beamstop_px=3)
    qr = resolve_q_range(dim)
    assert qr.floor * 200 < 0.5
    q, prof, _ = radial_profile(dim)
    beyond = (q > qr.q_max_nm + 1e-9) & np.isfinite(prof)
    assert prof[beyond][0] * 200 < 1.0 <= prof[np.argmin(np.abs(q - qr.q_max_nm))] * 200


def test_given_bounds_and_errors():
    avg, *_ = melt_averages(8, seed=1)
    qr = resolve_q_range(avg, 0.2, 0.6)
    assert (qr.q_min_nm, qr.q_max_nm) == (0.2, 0.6)
    assert qr.radii(avg.dq_nm) == pytest.approx((0.2 / 0.045, 0.6 / 0.045))
    with pytest.raises(ParameterError, match="regress.q_max_nm"):
        resolve_q_range(avg, "auto", 5.0, section="regress")
    with pytest.raises(InputError, match="too narrow"):
        resolve_q_range(avg, "auto", "auto", min_counts=1e9)
    extra = resolve_q_range(avg, extra_limits={"fringes_nm": 0.3})
    assert extra.q_max_nm == 0.3


def test_split_by_runs_holds_out_whole_runs():
    runs = np.repeat(np.arange(5), 10)
    tr, va, te = split_by_runs(runs, seed=0)
    assert len(np.unique(runs[va])) == 1 and len(np.unique(runs[te])) == 1
    assert not set(runs[tr]) & (set(runs[va]) | set(runs[te])) and runs[va][0] != runs[te][0]
    assert sorted(np.r_[tr, va, te]) == list(range(50))
    with pytest.raises(ValueError, match=">= 3 bootstrap runs"):
        split_by_runs(np.repeat([0, 1], 5), seed=0)


def test_ring_sums_per_row_ignore_unobserved_values():
    from spicompute.qrange import ring_sums

    values = np.array([[1.0, 2.0, np.nan, 4.0], [5.0, 6.0, 7.0, 8.0]])
    weights = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 2.0, 1.0, 1.0]])
    sums, totals = ring_sums(values, weights, np.array([0, 0, 1, 1]), 3)
    np.testing.assert_array_equal(sums, [[3.0, 4.0, 0.0], [12.0, 15.0, 0.0]])
    np.testing.assert_array_equal(totals, [[2.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
