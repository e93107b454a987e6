"""Oracle averages (spicompute.simulation.oracle): one sharp view per average at its
members' photons -- the bound the landscape matrix quotes for photon-starved cells."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from spicompute.io.averages import AverageSet
from spicompute.simulation.oracle import average_representatives, oracle_averages


def test_representatives_take_the_majority_shape_its_mean_melt_and_all_members_photons():
    truth = {"frame_id": np.arange(6),
             "class_name": np.array(["melt", "cube", "rod", "sphere", "rod", "rod"]),
             "melt_t": np.array([0.4, np.nan, np.nan, np.nan, np.nan, np.nan]),
             "quaternion": np.eye(4)[[0, 1, 2, 3, 0, 1]],
             "size_scale": np.array([1.0, 1.1, 0.9, 1.2, 1.1, 1.0]),
             "photons_expected": np.array([100.0, 200, 300, 400, 500, 600]),
             "background_photons": np.array([10, 20, 30, 40, 50, 60])}
    frames = pd.DataFrame({"frame_id": np.arange(6), "average_id": [0, 0, 0, 1, 1, -1]})
    reps = average_representatives(frames, truth).set_index("average_id")
    # average 0: melt 0.4 + cube (family, 2 of 3) + a rod -> family at t (0.4 + 0) / 2
    assert reps.loc[0, "kind"] == "melt"
    assert reps.loc[0, "melt_t"] == pytest.approx(0.2)
    assert reps.loc[0, "size_scale"] == pytest.approx(1.05)   # the family members' mean only
    assert reps.loc[0, "photons"] == 600.0 and reps.loc[0, "background"] == 60.0   # every member's
    np.testing.assert_array_equal(reps.loc[0, "quaternion"], np.eye(4)[0])
    assert reps.loc[0, "members"] == 3
    # average 1: a sphere and a rod tie -> one of them, with that kind's own orientation
    assert reps.loc[1, "kind"] in ("melt", "rod")
    row = 3 if reps.loc[1, "kind"] == "melt" else 4
    np.testing.assert_array_equal(reps.loc[1, "quaternion"], truth["quaternion"][row])
    assert -1 not in reps.index   # unassigned frames belong to no average


@pytest.fixture(scope="module")
def melt_family_averages():
    """Real-looking averages of 60 classes along the melt at random views (65^2 grid)."""
    from spicompute.geometry import grid_q  # noqa: F401  (AverageSet.q_grid uses it)
    from spicompute.orient.quaternions import random_quaternions
    from spicompute.simulation.simulate import SimulationParams, build_detector, make_library

    size = 65
    p = SimulationParams.from_dict(dict(detector_size=size, binning=3, volume_size=64, melt_levels=5, seed=1))
    det = build_detector(p, np.random.default_rng(0))
    library, _, _ = make_library(p, det)
    qg = det.q.reshape(size, size, 3)
    dq = float(qg[size // 2, size // 2 + 1, 0] - qg[size // 2, size // 2, 0])
    rng = np.random.default_rng(3)
    m, members = 60, 80   # classify2d.frames_per_class
    t_avg = np.linspace(0.0, 1.0, m)
    n = m * members
    truth = {"frame_id": np.arange(n), "class_name": np.full(n, "melt"),
             "melt_t": np.repeat(t_avg, members), "quaternion": random_quaternions(n, rng),
             "size_scale": np.ones(n), "photons_expected": np.full(n, 1.0), "background_photons": np.zeros(n)}
    frames = pd.DataFrame({"frame_id": np.arange(n), "average_id": np.repeat(np.arange(m), members)})
    c = size // 2
    yy, xx = np.mgrid[:size, :size] - c
    weight = np.broadcast_to((np.hypot(yy, xx) > 2.5).astype(np.float32), (m, size, size)).copy()
    weight[:, c:c + 1, : c - 6] = 0   # a half-width panel gap
    real = np.where(weight > 0, 1.0 / (1.0 + np.hypot(yy, xx)), 0).astype(np.float32)
    real /= real[0].sum()   # one photon per frame at unit fluence; see at_level
    avg = AverageSet(real, weight, np.arange(m), np.zeros(m, np.int64), np.arange(m), np.full(m, float(members)),
                     dq, p.wavelength_nm)
    return avg, truth, frames, library, t_avg


def at_level(avg: AverageSet, photons_per_frame: float) -> AverageSet:
    """The real averages holding ``photons_per_frame`` (what the counts-limited q range reads)."""
    return AverageSet(avg.intensity * photons_per_frame, avg.weight, avg.average_id, avg.run, avg.model,
                      avg.n_frames, avg.dq_nm, avg.wavelength_nm)


def landscape_rho(avg: AverageSet, t: np.ndarray) -> float:
    """Best |Spearman| of CLPCA pc_1..3 with t, through the ccmatrix stage's science at its defaults."""
    from spicompute.landscape.ccmatrix import compute_ccmatrix
    from spicompute.landscape.embedding import clpca
    from spicompute.stages.ccmatrix import check_params

    cc = compute_ccmatrix(avg, check_params({"n_angles": 90, "backend": "numpy"}))[0].cc
    pc = clpca(cc, 3).coords
    return max(abs(spearmanr(pc[:, k], t)[0]) for k in range(3))


def with_photons(truth: dict, per_frame: float, background: float = 0.0) -> dict:
    n = len(truth["frame_id"])
    return {**truth, "photons_expected": np.full(n, per_frame), "background_photons": np.full(n, background)}


def test_oracle_keeps_the_real_level_and_coverage_and_is_the_members_view(melt_family_averages):
    avg, truth, frames, library, _ = melt_family_averages
    reps = average_representatives(frames, with_photons(truth, 300.0, 50.0))
    ideal = oracle_averages(avg, reps, library, counts=False)
    observed = avg.weight > 0
    np.testing.assert_allclose(ideal.intensity.sum(axis=(1, 2)), avg.intensity.sum(axis=(1, 2)), rtol=1e-4)
    assert np.all(ideal.intensity[~observed] == 0)
    np.testing.assert_array_equal(ideal.average_id, avg.average_id)
    np.testing.assert_array_equal(ideal.n_frames, avg.n_frames)
    # the cube end has sharp fringes along the view's edges, the sphere end is round:
    # the sphere's view is far more isotropic in angle at a fringe radius
    c = avg.size // 2
    ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)

    def angular_spread(img, radius=12):
        vals = img[np.round(c + radius * np.sin(ang)).astype(int), np.round(c + radius * np.cos(ang)).astype(int)]
        vals = vals[vals > 0]
        return float(np.std(vals) / np.mean(vals))

    assert angular_spread(ideal.intensity[-1]) < 0.5 * angular_spread(ideal.intensity[0])
    # with counts: Poisson noise, same level, and the fewer the photons the noisier
    few = oracle_averages(avg, average_representatives(frames, with_photons(truth, 30.0, 50.0)), library,
                          rng=np.random.default_rng(1))
    many = oracle_averages(avg, average_representatives(frames, with_photons(truth, 3e4, 50.0)), library,
                           rng=np.random.default_rng(1))
    err = [np.abs(x.intensity - ideal.intensity)[observed].mean() for x in (few, many)]
    assert err[0] > 5 * err[1]


def test_oracle_bound_falls_with_the_members_photons(melt_family_averages):
    """Sharp views along the melt make a landscape that follows it, noise-free and at 2,000
    photons per frame; at 10 photons per frame the members' counts leave the common-line
    stage no q range to compare (the bound the matrix quotes for photon-starved cells)."""
    from spicompute.errors import InputError

    avg, truth, frames, library, t = melt_family_averages
    bright, starved = at_level(avg, 2000.0), at_level(avg, 10.0)
    reps_bright = average_representatives(frames, with_photons(truth, 2000.0, 50.0))
    rho_ceiling = landscape_rho(oracle_averages(bright, reps_bright, library, counts=False), t)
    rho_bright = landscape_rho(oracle_averages(bright, reps_bright, library, rng=np.random.default_rng(0)), t)
    print(f"oracle |rho|: noise-free {rho_ceiling:.3f}, 2,000 + 50 photons per frame {rho_bright:.3f}")
    assert rho_ceiling >= 0.9
    assert rho_bright >= 0.9
    reps_starved = average_representatives(frames, with_photons(truth, 10.0, 10.0))
    with pytest.raises(InputError, match="too narrow"):
        landscape_rho(oracle_averages(starved, reps_starved, library, rng=np.random.default_rng(0)), t)
