"""Relative particle size from the fringe spacing (spicompute.landscape.size_scale), and the
CC at a common size (``ccmatrix.size_normalise``), on closed-form cube and sphere
intensities with Poisson noise, two detector geometries and two photon levels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.stats import spearmanr

from spicompute.errors import ParameterError
from spicompute.landscape import commonlines as cl
from spicompute.landscape.size_scale import fit_size_scales, radial_profiles, scaled_polar_lines, size_scales
from spicompute.shapes import cube_intensity, sphere_intensity

GEOMETRIES = {"65px_0.05": (65, 0.05), "97px_0.035": (97, 0.035)}   # grid side, rad/nm per step
PHOTONS = {"bright": 3e5, "dim": 3e4}                               # expected photons per average


def average(shape: str, size_nm: float, side: int, dq: float, photons: float, rng, rotation=None):
    """A noisy 2D average of a sphere (diameter ``size_nm``) or a cube (edge), beamstop r < 3."""
    c = side // 2
    y, x = np.mgrid[:side, :side] - c
    q = np.stack([x * dq, y * dq, np.zeros_like(x, float)], -1)
    if shape == "sphere":
        inten = sphere_intensity(q, size_nm / 2)
    else:
        inten = cube_intensity(q @ (rotation if rotation is not None else np.eye(3)).T, size_nm)
    valid = np.hypot(x, y) >= 3
    inten = np.where(valid, inten, 0.0)
    expected = inten / inten.sum() * photons
    return rng.poisson(expected).astype(np.float32) / photons * inten.sum(), valid


def lines_of(intensity, valid, side, n_lines=90):
    radii = np.arange(4.0, side // 2 - 1)
    return (*cl.polar_lines(intensity, valid, radii, n_lines), radii)


def _set(shapes_sizes, side, dq, photons, seed=0):
    rng = np.random.default_rng(seed)
    out = [average(s, a, side, dq, photons, rng,
                   rotation=Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix())
           for s, a in shapes_sizes]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("level", list(PHOTONS))
def test_the_size_scale_recovers_relative_sphere_sizes(geometry, level):
    side, dq = GEOMETRIES[geometry]
    sizes = np.linspace(38.0, 48.0, 11)
    inten, valid = _set([("sphere", a) for a in sizes], side, dq, PHOTONS[level])
    lines, lvalid, radii = lines_of(inten, valid, side)
    s = size_scales(lines, lvalid, radii)
    truth = sizes / np.exp(np.median(np.log(sizes)))
    np.testing.assert_allclose(s, truth, rtol=0.015 if level == "bright" else 0.03)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_the_size_scale_recovers_cube_sizes_seen_along_one_axis(geometry):
    """Cubes in one general orientation: an exact rescaling of one pattern, recovered to 2 %.
    (Along different axes the fringe spacing differs by a few %: docs/ccmatrix_embed.md.)"""
    side, dq = GEOMETRIES[geometry]
    rng = np.random.default_rng(5)
    sizes = rng.uniform(38.0, 48.0, 12)
    rot = Rotation.from_euler("xyz", [25, 40, 10], degrees=True).as_matrix()
    inten, valid = (np.stack(x) for x in zip(*[average("cube", a, side, dq, PHOTONS["bright"], rng, rotation=rot)
                                                for a in sizes]))
    lines, lvalid, radii = lines_of(inten, valid, side)
    s = size_scales(lines, lvalid, radii)
    np.testing.assert_allclose(s, sizes / np.exp(np.median(np.log(sizes))), rtol=0.02)


def test_a_structureless_set_gets_no_size_information():
    """Negative control: flat noise has no fringes, so the scales do not follow the labels."""
    rng = np.random.default_rng(2)
    side = 65
    sizes = np.linspace(38.0, 48.0, 20)
    r = np.hypot(*(np.mgrid[:side, :side] - side // 2))
    inten = np.stack([rng.poisson(200.0 * np.exp(-r / 15.0)).astype(np.float32) for _ in sizes])
    valid = np.broadcast_to(r >= 3, inten.shape)
    lines, lvalid, radii = lines_of(inten, valid, side)
    s = size_scales(lines, lvalid, radii)
    assert abs(spearmanr(s, sizes)[0]) < 0.5


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_at_a_common_size_the_cc_groups_by_shape_not_size(geometry):
    """Spheres of 40 and 46 nm, cubes of 43 and 37 nm.  The plain CC finds the 40 nm sphere
    more like a cube than like the 46 nm sphere (size confounds shape); at a common size
    the two spheres are the closest pair across shapes, by a margin."""
    side, dq = GEOMETRIES[geometry]
    rng = np.random.default_rng(3)
    rot = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    made = [average("sphere", 40.0, side, dq, 3e5, rng), average("sphere", 46.0, side, dq, 3e5, rng),
            average("cube", 43.0, side, dq, 3e5, rng, rotation=rot),
            average("cube", 37.0, side, dq, 3e5, rng, rotation=rot)]
    inten, valid = np.stack([x[0] for x in made]), np.stack([x[1] for x in made])
    radii = np.arange(4.0, side // 2 - 1)
    raw, rv = cl.polar_lines(inten, valid, radii, 90)
    s = size_scales(raw, rv, radii)
    assert s[1] / s[0] == pytest.approx(46 / 40, rel=0.02)
    plain = cl.cc_matrix(cl.normalise_lines(raw, rv, "radial")).cc
    scaled_raw, scaled_v = scaled_polar_lines(inten, valid, radii, s, 90)
    common = cl.cc_matrix(cl.normalise_lines(scaled_raw, scaled_v, "radial")).cc
    cross = lambda cc: cc[:2, 2:].max()                          # noqa: E731  best sphere-cube pair
    assert plain[0, 1] < cross(plain)
    assert common[0, 1] > cross(common) + 0.1
    assert common[2, 3] > cross(common) + 0.1


def test_scales_of_one_resample_exactly_the_plain_lines():
    side, dq = GEOMETRIES["65px_0.05"]
    inten, valid = _set([("sphere", 40.0), ("cube", 44.0)], side, dq, 1e5)
    radii = np.arange(4.0, side // 2 - 1)
    plain = cl.polar_lines(inten, valid, radii, 60)
    same = scaled_polar_lines(inten, valid, radii, np.ones(2), 60)
    np.testing.assert_array_equal(plain[0], same[0])
    np.testing.assert_array_equal(plain[1], same[1])


def test_radii_beyond_the_grid_are_invalid_not_clamped_values():
    side = 65
    inten, valid = _set([("sphere", 40.0)], side, 0.05, 1e5)
    radii = np.arange(4.0, side // 2 - 1)
    lines, lv = scaled_polar_lines(inten, valid, radii, np.array([0.8]), 30)   # samples r / 0.8
    outside = radii / 0.8 > side // 2 - 0.5     # the grid's last radius: 31.5 steps
    assert outside.any() and not lv[0][:, outside].any() and lv[0][:, ~outside].any()


def test_profiles_average_only_valid_bins():
    lines = np.array([[[1.0, 2.0], [3.0, 100.0]]], np.float32)     # (1 average, 2 lines, 2 radii)
    valid = np.array([[[True, True], [True, False]]])
    prof, ok = radial_profiles(lines, valid)
    np.testing.assert_allclose(prof, [[2.0, 2.0]])
    assert ok.all()


def test_bad_inputs_name_the_parameter():
    prof = np.ones((3, 4))
    with pytest.raises(ParameterError, match="ccmatrix.q_min_nm"):
        fit_size_scales(prof, prof > 0, np.arange(1.0, 5.0))                 # too few radii
    with pytest.raises(ValueError, match="max_factor"):
        fit_size_scales(np.ones((3, 10)), np.ones((3, 10), bool), np.arange(1.0, 11.0), max_factor=1.0)
    with pytest.raises(ValueError, match="scales"):
        scaled_polar_lines(np.ones((2, 9, 9)), None, np.arange(1.0, 4.0), np.array([1.0, -1.0]), 8)


def test_the_stage_parameter_must_be_a_boolean():
    from spicompute.stages.ccmatrix import check_params

    assert check_params({})["size_normalise"] is False
    with pytest.raises(ParameterError, match="ccmatrix.size_normalise"):
        check_params({"size_normalise": "yes"})


def test_the_stage_writes_the_scales_and_embed_reports_a_size_axis(tmp_path):
    """ccmatrix -> embed through the CLI on spheres of 38-48 nm and one-orientation cubes of
    the same sizes: the file holds the scales, embed names the axis that follows size, and
    with ``size_normalise`` the CC groups the averages by shape (not by size)."""
    import json

    import pandas as pd
    import yaml

    from spicompute.cli import main
    from spicompute.io.averages import AverageSet, write_averages
    from spicompute.landscape.commonlines import read_ccmatrix

    side, dq = GEOMETRIES["65px_0.05"]
    rng = np.random.default_rng(11)
    rot = Rotation.from_euler("xyz", [25, 40, 10], degrees=True).as_matrix()
    sizes = np.tile(np.linspace(38.0, 48.0, 8), 2)
    shapes = ["sphere"] * 8 + ["cube"] * 8
    made = [average(sh, a, side, dq, 3e5, rng, rotation=rot) for sh, a in zip(shapes, sizes)]
    m = len(made)
    weight = np.stack([x[1] for x in made]).astype(np.float32)
    avg = AverageSet(np.stack([x[0] for x in made]) * weight, weight, np.arange(m), np.zeros(m, int),
                     np.arange(m), np.full(m, 50.0), dq, 0.2066)
    write_averages(tmp_path / "averages.h5", avg)
    within = np.equal.outer(np.array(shapes), np.array(shapes)) & ~np.eye(m, dtype=bool)
    across = ~np.equal.outer(np.array(shapes), np.array(shapes))
    gap = {}
    for normalise in (False, True):
        folder = tmp_path / str(normalise)
        folder.mkdir()
        params = folder / "params.yaml"
        params.write_text(yaml.safe_dump({"ccmatrix": {"n_angles": 90, "size_normalise": normalise,
                                                       "q_min_nm": 0.2, "q_max_nm": 1.5},
                                          "embed": {"methods": ["pc"]}}))
        assert main(["ccmatrix", "--params", str(params), "-q", "--averages", str(tmp_path / "averages.h5"),
                     "--out", str(folder / "cc.h5"), "--metrics", str(folder / "cc.json")]) == 0
        ccf = read_ccmatrix(folder / "cc.h5")
        for part in (slice(0, 8), slice(8, 16)):   # within a shape the scale follows size (across
            sc = ccf.size_scale[part]              # shapes a cube's fringes differ from a sphere's)
            assert spearmanr(sc, sizes[part])[0] == pytest.approx(1.0)
            assert sc[-1] / sc[0] > 1.1   # the magnitude is relative to a reference blended from both
        metrics = json.loads((folder / "cc.json").read_text())
        assert metrics["size_normalise"] is normalise and 0.8 < metrics["size_scale_p05_p95"][0] < 1 < \
            metrics["size_scale_p05_p95"][1] < 1.3
        gap[normalise] = ccf.cc[within].mean() - ccf.cc[across].mean()
        assert main(["embed", "--params", str(params), "-q", "--ccmatrix", str(folder / "cc.h5"),
                     "--part", str(folder / "embed.parquet"), "--out", str(folder / "emb.h5"),
                     "--metrics", str(folder / "embed.json")]) == 0
        table = pd.read_parquet(folder / "embed.parquet")
        np.testing.assert_allclose(table["size_scale"], ccf.size_scale)
        rho = json.loads((folder / "embed.json").read_text())["size_spearman"]
        if not normalise:   # plain CC: some axis is size
            assert max(abs(v) for v in rho.values()) > 0.8, rho
    assert gap[True] > gap[False] + 0.05, gap


def test_a_narrow_q_range_gives_no_scale_unless_normalising_asks_for_one(tmp_path, capsys):
    """Four radii: the stage carries on with scales of 1 (and says so); size_normalise is one
    line naming the parameter."""
    import yaml

    from spicompute.cli import main
    from spicompute.io.averages import AverageSet, write_averages
    from spicompute.landscape.commonlines import read_ccmatrix

    side, dq = GEOMETRIES["65px_0.05"]
    inten, valid = _set([("sphere", a) for a in (38.0, 42.0, 46.0, 40.0, 44.0, 48.0)], side, dq, 3e5)
    w = valid.astype(np.float32)
    avg = AverageSet(inten * w, w, np.arange(6), np.zeros(6, int), np.arange(6), np.full(6, 50.0), dq, 0.2066)
    write_averages(tmp_path / "averages.h5", avg)
    for normalise in (False, True):
        params = tmp_path / f"p{normalise}.yaml"
        params.write_text(yaml.safe_dump({"ccmatrix": {"n_angles": 30, "q_min_nm": 0.5, "q_max_nm": 0.65,
                                                       "size_normalise": normalise}}))
        rc = main(["ccmatrix", "--params", str(params), "-q", "--averages", str(tmp_path / "averages.h5"),
                   "--out", str(tmp_path / f"cc{normalise}.h5"), "--metrics", str(tmp_path / f"cc{normalise}.json")])
        if normalise:
            assert rc != 0 and not (tmp_path / "ccTrue.h5").exists()
            assert "ccmatrix.size_normalise" in capsys.readouterr().err
        else:
            assert rc == 0
            np.testing.assert_array_equal(read_ccmatrix(tmp_path / "ccFalse.h5").size_scale, np.ones(6))
