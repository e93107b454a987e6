"""Volumes against truth (spicompute.validation): the melt matcher, true particle volumes,
per-average truth.  The truth levels and the 'generated' volumes come from two different
grids (and, for intermediate shapes, from the closed-form superellipsoid rather than the
levels), so a match is not a copy compared with itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spicompute.shapes import melt_half_size, superellipsoid_exponent, superellipsoid_intensity_volume
from spicompute.validation import average_truth, melt_match, resample_volume, true_particle_volume

EDGE, GROWTH = 42.0, 0.1
LEVELS = np.linspace(0.0, 1.0, 5)
TRUTH_SIZE, TRUTH_DQ = 49, 0.03  # the simulator's truth grid: fine and wide
SIZE, DQ = 27, 0.045             # the VAE's grid: coarse


def melt_volume(t: float, size: int, dq: float) -> np.ndarray:
    p = min(superellipsoid_exponent(t), 60.0) if t > 0 else 60.0
    with np.errstate(over="ignore"):  # |x/r|^p overflows far outside the particle: density 0 there
        return superellipsoid_intensity_volume(size, dq, 3, melt_half_size(t, EDGE, GROWTH), p)


@pytest.fixture(scope="module")
def truth_levels():
    return np.stack([melt_volume(t, TRUTH_SIZE, TRUTH_DQ) for t in LEVELS])


def observed_shell(size=SIZE, dq=DQ, q_min=0.06, q_max=0.55):
    idx = np.indices((size,) * 3) - size // 2
    qn = np.sqrt((idx ** 2).sum(0)) * dq
    return (qn >= q_min) & (qn <= q_max)


def test_resample_volume_keeps_the_centre_and_marks_the_outside():
    vol = melt_volume(0.0, 21, 0.05)
    same = resample_volume(vol, 0.05, 21, 0.05)
    np.testing.assert_allclose(same, vol, rtol=1e-6)
    wide = resample_volume(vol, 0.05, 31, 0.05)
    assert np.isnan(wide[0, 0, 0]) and wide[15, 15, 15] == pytest.approx(vol[10, 10, 10])


def test_melt_match_finds_each_level_on_another_grid(truth_levels):
    generated = np.stack([resample_volume(v, TRUTH_DQ, SIZE, DQ) for v in truth_levels])
    r = melt_match(generated, observed_shell(), DQ, truth_levels, LEVELS, TRUTH_DQ)
    np.testing.assert_allclose(r["t_hat"], LEVELS, atol=1e-9)
    assert (r["cc_best"] > 0.999).all()


def test_melt_match_places_intermediate_shapes_in_order(truth_levels):
    ts = np.array([0.15, 0.4, 0.6, 0.85])
    generated = np.stack([melt_volume(t, SIZE, DQ) for t in ts])
    r = melt_match(generated, observed_shell(), DQ, truth_levels, LEVELS, TRUTH_DQ)
    assert np.all(np.diff(r["t_hat"]) > 0), r["t_hat"]
    np.testing.assert_allclose(r["t_hat"], ts, atol=0.15)
    # a scale factor does not change the match
    scaled = melt_match(generated * 37.0, observed_shell(), DQ, truth_levels, LEVELS, TRUTH_DQ)
    np.testing.assert_allclose(scaled["t_hat"], r["t_hat"])


def test_truth_cc_to_ends_says_what_the_shell_resolves(truth_levels):
    """The truth at t_hat against the true cube / sphere: 1 at the ends themselves; a slightly
    melted cube is indistinguishable from the cube on a low-resolution shell (CC > 0.99) and
    clearly apart on a wide one, and a half-melted shape is far from both ends either way."""
    generated = np.stack([resample_volume(v, TRUTH_DQ, SIZE, DQ) for v in truth_levels])
    wide = melt_match(generated, observed_shell(), DQ, truth_levels, LEVELS, TRUTH_DQ)["truth_cc_to_ends"]
    np.testing.assert_allclose(wide[0, 0], 1.0, atol=1e-9)
    np.testing.assert_allclose(wide[-1, 1], 1.0, atol=1e-9)
    assert wide[2].max() < 0.9                               # t = 0.5: neither end
    slightly = melt_volume(0.15, SIZE, DQ)[None]
    low = melt_match(slightly, observed_shell(q_max=0.2), DQ, truth_levels, LEVELS, TRUTH_DQ)
    high = melt_match(slightly, observed_shell(q_max=0.58), DQ, truth_levels, LEVELS, TRUTH_DQ)
    assert abs(high["t_hat"][0] - 0.15) < 0.05 and high["truth_cc_to_ends"][0, 0] < 0.96
    assert low["truth_cc_to_ends"][0, 0] > 0.99    # whatever t_hat says there, the shell cannot tell


def test_sized_melt_match_finds_the_size_and_the_melt_of_a_larger_or_smaller_particle(truth_levels):
    """Levels of a particle 5 % smaller (or 4 % larger) than the truth's, on the VAE's grid: the
    (melt, size) match gives each level and its size back, with a correlation near 1; the
    nominal-size match correlates worse.  Volumes of the nominal size get size 1 (the negative
    control: no size is invented)."""
    sizes = 1.0 + np.arange(-8, 9) * 0.01
    shell = observed_shell()
    for a in (0.95, 1.04):
        generated = np.stack([resample_volume(v, TRUTH_DQ / a, SIZE, DQ) for v in truth_levels])
        r = melt_match(generated, shell, DQ, truth_levels, LEVELS, TRUTH_DQ, sizes=sizes)
        np.testing.assert_allclose(r["size_hat"], a, atol=1e-9)
        np.testing.assert_allclose(r["t_hat_sized"], LEVELS, atol=1e-9)
        assert (r["cc_best_sized"] > 0.999).all() and (r["cc_best"] < 0.99).all()
    nominal = np.stack([resample_volume(v, TRUTH_DQ, SIZE, DQ) for v in truth_levels])
    r = melt_match(nominal, shell, DQ, truth_levels, LEVELS, TRUTH_DQ, sizes=sizes)
    np.testing.assert_allclose(r["size_hat"], 1.0, atol=1e-9)
    np.testing.assert_allclose(r["t_hat_sized"], r["t_hat"], atol=1e-9)


def test_melt_match_negative_control(truth_levels, rng):
    """A volume that is not of the family (voxels shuffled within shells, or a rod) matches poorly."""
    cube = melt_volume(0.0, SIZE, DQ)
    shuffled = cube.copy().ravel()
    idx = np.indices((SIZE,) * 3) - SIZE // 2
    shell = np.rint(np.sqrt((idx ** 2).sum(0))).ravel()
    for s in np.unique(shell):
        k = np.flatnonzero(shell == s)
        shuffled[k] = shuffled[rng.permutation(k)]
    shuffled = shuffled.reshape(cube.shape)
    good = melt_match(cube[None], observed_shell(), DQ, truth_levels, LEVELS, TRUTH_DQ)["cc_best"][0]
    bad = melt_match(shuffled[None], observed_shell(), DQ, truth_levels, LEVELS, TRUTH_DQ)["cc_best"][0]
    assert good > 0.9 and bad < good - 0.3


def test_true_particle_volume_is_sqrt_of_i0(truth_levels):
    v = true_particle_volume(truth_levels, LEVELS, LEVELS)
    expected = EDGE ** 3 * (1 + GROWTH * LEVELS)
    np.testing.assert_allclose(v, expected, rtol=0.02)
    mid = true_particle_volume(truth_levels, LEVELS, [0.125])
    assert v[0] < mid[0] < v[1]


def test_average_truth_labels_family_and_melt():
    truth = {"frame_id": np.arange(6), "class_name": np.array(["cube", "melt", "sphere", "rod", "rod", "melt"]),
             "melt_t": np.array([np.nan, 0.4, np.nan, np.nan, np.nan, 0.6]), "size_nm": np.full(6, 42.0)}
    frames = pd.DataFrame({"frame_id": [0, 1, 2, 3, 4, 5, 5], "average_id": [0, 0, 1, 1, 1, 2, -1]})
    t = average_truth(frames, truth).set_index("average_id")
    assert t.loc[0, "melt_t"] == pytest.approx(0.2) and t.loc[0, "family"]
    assert t.loc[1, "contaminant"] == pytest.approx(2 / 3) and not t.loc[1, "family"]
    assert t.loc[1, "melt_t"] == pytest.approx(1.0)  # the sphere member; rods carry no melt
    assert t.loc[2, "members"] == 1


def test_latent_follows_melt_and_orders_the_melted_averages_by_size():
    """A latent that follows melt and, among the melted averages, their size: both figures near 1; the
    same latent with its melted values shuffled keeps a high melt figure but loses the size one
    (negative control); too few melted averages give None; contaminants and untrained ones are
    ignored."""
    import pandas as pd

    from spicompute.validation import latent_follows_melt

    rng = np.random.default_rng(7)
    n = 200
    melt = np.concatenate([rng.uniform(0, 0.9, 120), rng.uniform(0.9, 1.0, 80)])
    size = 52 * (1 + 0.02 * rng.standard_normal(n))
    z = np.where(melt < 0.9, melt, 0.9 + 0.5 * (size - size.min()) / np.ptp(size))
    per_average = pd.DataFrame({"average_id": np.arange(n + 5), "melt_t": np.r_[melt, np.full(5, np.nan)],
                                "size_nm": np.r_[size, np.full(5, 30.0)],
                                "family": np.r_[np.ones(n, bool), np.zeros(5, bool)]})
    latents = pd.DataFrame({"average_id": np.arange(n + 5), "z_1": np.r_[-z, rng.normal(size=5)],
                            "z_logvar_1": np.zeros(n + 5), "vae_trained": True})
    m = latent_follows_melt(latents, per_average)
    assert m["n_family_trained"] == n and m["n_melted_trained"] == 80
    assert m["rho_z_melt"]["z_1"] > 0.9 and m["rho_z_size_melted"]["z_1"] > 0.99
    shuffled = latents.copy()
    melted_rows = np.flatnonzero(melt >= 0.9)
    shuffled.loc[melted_rows, "z_1"] = rng.permutation(shuffled.loc[melted_rows, "z_1"].to_numpy())
    m2 = latent_follows_melt(shuffled, per_average)
    assert m2["rho_z_melt"]["z_1"] > 0.85 and m2["rho_z_size_melted"]["z_1"] < 0.3
    few = latent_follows_melt(latents, per_average.assign(melt_t=np.r_[np.minimum(melt, 0.85), np.full(5, np.nan)]))
    assert few["rho_z_size_melted"]["z_1"] is None and few["n_melted_trained"] == 0
    assert "rho_size_rel_true_size" not in m   # no fitted sizes in these latents
    # the VAE's fitted sizes (vae.size_fit): their rank correlation with the members' true size,
    # and none for sizes unrelated to it (negative control)
    fitted = latents.assign(size_rel=np.r_[size / 52 * (1 + 0.005 * rng.standard_normal(n)), np.ones(5)])
    assert latent_follows_melt(fitted, per_average)["rho_size_rel_true_size"] > 0.9
    unrelated = latents.assign(size_rel=rng.permutation(fitted["size_rel"].to_numpy()))
    assert abs(latent_follows_melt(unrelated, per_average)["rho_size_rel_true_size"]) < 0.3


def test_truth_fit_of_averages_prefers_the_true_shapes_over_an_untrained_decoder():
    """Averages made from the true shapes at known orientations: the truth explains them far
    better than an untrained decoder does; with orientations shuffled the truth fits worse."""
    import torch

    from spicompute.vae.data import plan_preprocessing
    from spicompute.vae.model import VAE, architecture
    from spicompute.validation import truth_fit_of_averages
    from tests.melt_series import melt_averages

    avg, t, quats, vols, levels = melt_averages(40, seed=2, photons=3e5)
    idx = np.arange(40)
    prep = plan_preprocessing(avg, idx, input_size=27, volume_size=27)
    torch.manual_seed(0)
    model = VAE(architecture("demo", 1))
    mu = np.zeros((40, 1))
    fit = truth_fit_of_averages(model, prep, avg, quats, np.ones(40), idx, mu, t, vols, levels, 0.03)
    assert sum(band["n"] for band in fit.values()) == 40
    # (the untrained decoder is nearly isotropic: near the sphere end it can fit as well)
    assert np.median([b["truth"] for b in fit.values()]) < 0.5 * np.median([b["vae"] for b in fit.values()])
    shuffled = truth_fit_of_averages(model, prep, avg, quats[np.random.default_rng(0).permutation(40)],
                                     np.ones(40), idx, mu, t, vols, levels, 0.03)
    assert np.median([b["truth"] for b in shuffled.values()]) > 2 * np.median([b["truth"] for b in fit.values()])


@pytest.fixture(scope="module")
def library():
    from spicompute.simulation.simulate import ShapeLibrary, SimulationParams
    from tests.conftest import small_simulation_params

    return ShapeLibrary(SimulationParams.from_dict(small_simulation_params()), 1.2)


def test_members_intensity_is_the_mean_of_each_members_own_pattern(library, rng):
    import torch

    from spicompute.simulation.oracle import members_intensity

    q = rng.uniform(-0.4, 0.4, (300, 3))
    one = lambda t, s: s ** 6 * library.intensity(  # noqa: E731
        "melt", torch.from_numpy((q * s).astype(np.float32))[None], t=np.array([t]))[0].numpy()
    np.testing.assert_allclose(members_intensity(library, [0.0], [1.0], q), one(0.0, 1.0), rtol=1e-4)
    # a member 5 % larger scatters a^6 I(a q): more, and with its fringes at smaller q
    np.testing.assert_allclose(members_intensity(library, [0.5], [1.05], q), one(0.5, 1.05), rtol=1e-4)
    both = members_intensity(library, [0.0, 1.0, 1.0], [1.0, 0.96, 0.96], q)
    np.testing.assert_allclose(both, (one(0.0, 1.0) + 2 * one(1.0, 0.96)) / 3, rtol=1e-4)
    with pytest.raises(ValueError, match="no member"):
        members_intensity(library, [], [], q)


def test_the_melt_family_is_oh_symmetric_as_the_validate_stage_assumes(library, rng):
    """validate evaluates the members' intensity once per sorted |index| triple (1/48 of a grid)."""
    import torch

    q = rng.uniform(-0.5, 0.5, (200, 3)).astype(np.float32)
    turned = -q[:, [2, 0, 1]] * np.array([1, -1, 1], np.float32)   # a permutation with sign flips
    for t in (0.0, 0.3, 0.7, 1.0):
        a = library.intensity("melt", torch.from_numpy(q)[None], t=np.array([t]))[0].numpy()
        b = library.intensity("melt", torch.from_numpy(turned)[None], t=np.array([t]))[0].numpy()
        if t in (0.0, 1.0):   # closed forms: exact
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9 * a.max())
        else:                 # the simulator's octant amplitude grids: symmetric to their interpolation
            assert np.abs(a - b).max() < 1e-3 * a.max()
            bright = a > 1e-3 * a.max()
            assert np.median(np.abs(a - b)[bright] / a[bright]) < 2e-3


def test_nearest_trained_averages_in_the_latent():
    from spicompute.validation import nearest_trained

    z = np.array([[0.0], [1.0], [2.0], [3.0], [np.nan]])
    trained = np.array([True, False, True, True, True])
    near = nearest_trained(np.array([[0.9], [3.2]]), z, trained, k=2)
    assert near.tolist() == [[0, 2], [3, 2]]          # untrained and non-finite averages never count
    assert nearest_trained(np.array([[0.0]]), z, trained, k=10).shape == (1, 3)
    with pytest.raises(ValueError, match="no trained"):
        nearest_trained(np.array([[0.0]]), z, np.zeros(5, bool))


def test_shell_log_cc_scores_a_volume_against_its_own_reference(truth_levels, rng):
    from spicompute.validation import shell_log_cc

    ref = np.stack([resample_volume(v, TRUTH_DQ, SIZE, DQ) for v in truth_levels[[0, -1]]])
    shell = observed_shell()
    np.testing.assert_allclose(shell_log_cc(ref * 7.0, ref, shell), 1.0, atol=1e-12)   # any scale
    swapped = shell_log_cc(ref[::-1], ref, shell)                    # cube against sphere
    shuffled = ref.copy()
    for v in shuffled:
        v[shell] = rng.permutation(v[shell])
    assert (swapped < 0.9).all() and (shell_log_cc(shuffled, ref, shell) < 0.5).all()


def test_members_truth_of_each_volume_point(library, monkeypatch):
    """validate's members' truth on a hand-made case: the points' nearest trained averages hold
    cubes, spheres, and (third point) only dimers -- no family truth there, NaN, not an error."""
    import torch

    import spicompute.simulation.oracle as oracle
    from spicompute.stages.validate import _members_truth

    monkeypatch.setattr(oracle, "library_from_truth", lambda path, extent: library)
    levels = np.linspace(0.0, 1.0, 5)

    def grid(size, dq):
        axis = (np.arange(size) - size // 2) * dq
        return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)

    def family(size, dq, t):
        q = torch.from_numpy(grid(size, dq))[None]
        return library.intensity("melt", q, t=np.array([t]))[0].numpy().reshape((size,) * 3)

    truth_volumes = np.stack([family(31, 0.03, t) for t in levels])
    size, dq = 15, 0.05
    idx = np.indices((size,) * 3) - size // 2
    qn = np.sqrt((idx ** 2).sum(0)) * dq
    observed = (qn >= 0.1) & (qn <= 0.35)
    vol = {"intensity": np.stack([family(size, dq, 0.0), family(size, dq, 1.0), family(size, dq, 0.5)]),
           "observed": observed, "dq_nm": dq, "z": np.array([[-1.0], [1.0], [5.0]])}
    latents = pd.DataFrame({"average_id": [10, 11, 12, 13], "z_1": [-1.0, -0.9, 1.0, 5.0],
                            "vae_trained": [True, True, True, True]})
    frames = pd.DataFrame({"frame_id": np.arange(8), "average_id": [10, 10, 11, 11, 12, 12, 13, 13]})
    truth = {"frame_id": np.arange(8), "class_name": np.array(["cube"] * 4 + ["sphere"] * 2 + ["dimer"] * 2),
             "melt_t": np.full(8, np.nan), "size_scale": np.ones(8)}
    monkeypatch.setattr("spicompute.validation.MEMBERS_NEAR", 1)
    out = _members_truth("truth.h5", vol, latents, frames, truth, truth_volumes, levels, 0.03)
    np.testing.assert_allclose(out["members_melt"][:2], [0.0, 1.0])
    np.testing.assert_allclose(out["members_t_hat"][:2], [0.0, 1.0], atol=1e-9)
    assert (out["cc_to_members"][:2] > 0.999).all()          # each volume is exactly its members' mixture
    np.testing.assert_allclose(out["members_volume_nm3"][0], np.sqrt(truth_volumes[0, 15, 15, 15]), rtol=1e-6)
    for name, values in out.items():                         # only dimers near the third point
        assert np.isnan(values[2]), name
