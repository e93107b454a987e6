"""Particle size from the radial profile and the automatic in-plane rotation count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import small_simulation_params
from spicompute.emc2d.run import EMCConfig, resolve_n_rot
from spicompute.errors import ParameterError
from spicompute.emc2d.particle_size import auto_n_rot, estimate_particle_size_nm

pytestmark = pytest.mark.slow  # whole-stage or whole-pipeline runs: `make test-fast` skips them

# the simulated cubes (edge 42 nm) have the volume of a sphere of this diameter
CUBE_EQUIVALENT_D = 42.0 * (6 / math.pi) ** (1 / 3)


def test_auto_n_rot_makes_the_arc_half_a_speckle():
    D, q = 50.0, 0.8
    n = auto_n_rot(D, q)
    arc = q * 2 * math.pi / n
    assert arc <= 0.5 * 2 * math.pi / D + 1e-12          # at most half a speckle
    assert arc > 0.5 * 2 * math.pi / D * (n - 8) / n      # and not much finer
    assert n % 4 == 0
    assert auto_n_rot(D, q, half_turn=True) <= n // 2 + 4
    assert auto_n_rot(1.0, 0.1) == 8


@pytest.mark.parametrize("which", ["bright", "low_photon_background", "finer_geometry"])
def test_particle_size_from_the_data(which, small_simulation, low_photon_simulation):
    if which == "bright":
        frames = small_simulation[0]
    elif which == "low_photon_background":
        frames = low_photon_simulation[0]
    else:
        from spicompute.simulation.simulate import SimulationParams, simulate

        frames, _ = simulate(SimulationParams.from_dict(small_simulation_params(
            n_frames=150, detector_size=65, binning=2, seed=3)), progress=False)
    D = estimate_particle_size_nm(frames.counts, frames.detector)
    assert D is not None
    assert abs(D - CUBE_EQUIVALENT_D) < 0.15 * CUBE_EQUIVALENT_D, D


def test_featureless_frames_give_no_size(small_simulation):
    frames = small_simulation[0]
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    flat = sp.csr_matrix(rng.poisson(2.0, size=(100, frames.n_pixels)).astype(np.int32))
    assert estimate_particle_size_nm(flat, frames.detector) is None


def test_resolve_n_rot_auto_and_given(small_simulation):
    frames = small_simulation[0]
    n, info = resolve_n_rot(frames, EMCConfig(n_rot="auto", particle_size_nm=40.0))
    q = info["q_max_used_nm"]
    assert n == auto_n_rot(40.0, q) and info["particle_size_source"] == "given"
    n2, info2 = resolve_n_rot(frames, EMCConfig(n_rot="auto", q_max_nm=q / 2))
    assert info2["q_max_used_nm"] == pytest.approx(q / 2)
    assert abs(info2["particle_size_nm"] - CUBE_EQUIVALENT_D) < 0.15 * CUBE_EQUIVALENT_D
    assert n2 == auto_n_rot(info2["particle_size_nm"], q / 2)
    assert resolve_n_rot(frames, EMCConfig(n_rot=12))[0] == 12


@pytest.mark.parametrize("kw", [dict(n_rot="many"), dict(n_rot=0), dict(n_rot=True),
                                dict(n_rot="auto", particle_size_nm=-3)])
def test_bad_rotation_parameters_are_named(kw):
    with pytest.raises(ParameterError):
        EMCConfig(**kw).validate()


def test_bootstrap_uses_and_records_the_resolved_n_rot(small_simulation):
    from spicompute.emc2d.run import run_bootstrap

    frames = small_simulation[0]
    res = run_bootstrap(frames, EMCConfig(n_models=2, n_rot="auto", particle_size_nm=30.0,
                                          n_runs=1, max_iter=2, min_iter=2, device="cpu"))
    assert res.grid.n_rot == res.resolved["n_rot"] == auto_n_rot(30.0, res.resolved["q_max_used_nm"])
    assert res.resolved["n_rot_source"] == "auto"


@pytest.mark.parametrize("q_end, expected", [(1.2, None), (2.5, 6.0)])
def test_size_needs_a_fringe_in_range(q_end, expected):
    """A profile that never reaches the first zero of the fitted sphere gives no size:
    a background floor would otherwise fit as a tiny sphere (low-photon data)."""
    from spicompute.emc2d.particle_size import estimate_particle_size

    q = np.linspace(0.03, q_end, 90)
    x = q * 3.0
    form = (3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2
    size = estimate_particle_size(q, form, 0.03, q_end)
    if expected is None:
        assert size is None
    else:
        assert size == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("diameter", [40.0, 52.0, 70.0])
@pytest.mark.parametrize("offset", [0.0, 3e-3, 1e-2])
def test_a_flat_part_under_the_profile_does_not_change_the_size(diameter, offset):
    """Background left flat under the particle's profile is fitted as an offset (the frames'
    fit for ``n_rot: auto``): the sphere-fit size stays.  Without the offset such a profile
    reads as no size at all (D 52, 1 %; D 70, 0.3 %)."""
    from spicompute.emc2d.particle_size import estimate_particle_size

    q = np.linspace(0.035, 0.55, 30)
    x = np.outer(q, diameter / 2 * np.linspace(0.9, 1.1, 7))
    form = np.mean((3 * (np.sin(x) - x * np.cos(x)) / x**3) ** 2, axis=1)
    noisy = form * (1 + 0.05 * np.random.default_rng(0).normal(size=q.size))
    size = estimate_particle_size(q, noisy + offset * form.max(), 0.035, flat_offset=True)
    assert size == pytest.approx(diameter, rel=0.05)
    if offset == 0.0:   # the default (log-scale) fit agrees where nothing is flat under the profile
        assert estimate_particle_size(q, noisy, 0.035) == pytest.approx(diameter, rel=0.05)
