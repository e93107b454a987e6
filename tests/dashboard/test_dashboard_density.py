"""Latent density ("energy landscape"): averages weighted by member frames, Scott bandwidth,
drawn as −log density contours on the Landscape and the VAE latent (AppTest)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.data.density import weighted_density
from conftest import REPO, decode_plotly_array  # tests/ is on sys.path (rootdir conftest)
from tests.dashboard.volume_workspace import make_volume_workspace

PAGES = REPO / "dashboard" / "pages"


def two_groups(rng):
    """60 light averages around (-2, 0) and 6 heavy ones around (+2, 0): more averages on
    the left, more particles (frames) on the right."""
    left = rng.normal([-2.0, 0.0], 0.3, size=(60, 2))
    right = rng.normal([2.0, 0.0], 0.3, size=(6, 2))
    pts = np.vstack([left, right])
    frames = np.r_[np.full(60, 2.0), np.full(6, 200.0)]
    return pts, frames


def _minimum(dens) -> tuple[float, float]:
    i, j = np.unravel_index(np.nanargmin(dens.energy), dens.energy.shape)
    return dens.axes[0][j], dens.axes[1][i]


def test_weighting_by_frames_moves_the_minimum_to_where_the_particles_are(rng):
    pts, frames = two_groups(rng)
    weighted = weighted_density(pts, frames)
    assert _minimum(weighted)[0] > 1.0                      # the heavy averages
    unweighted = weighted_density(pts)                       # negative control
    assert _minimum(unweighted)[0] < -1.0                    # the numerous averages
    assert np.nanmin(weighted.energy) == pytest.approx(0.0)


def test_bandwidth_is_scotts_rule_on_the_weighted_data(rng):
    pts, frames = two_groups(rng)
    dens = weighted_density(pts, frames)
    n_eff = frames.sum() ** 2 / (frames ** 2).sum()
    assert dens.n_eff == pytest.approx(n_eff)
    assert dens.factor == pytest.approx(n_eff ** (-1 / 6))
    mean = np.average(pts, axis=0, weights=frames)
    var = np.average((pts - mean) ** 2, axis=0, weights=frames) / (1 - (frames ** 2).sum() / frames.sum() ** 2)
    np.testing.assert_allclose(dens.bandwidth, dens.factor * np.sqrt(var), rtol=1e-6)
    # the density integrates to one (on a grid wide enough to hold the kernels' tails)
    dens = weighted_density(pts, frames, pad=1.5, n_grid=120)
    dx, dy = np.diff(dens.axes[0])[0], np.diff(dens.axes[1])[0]
    assert dens.density.sum() * dx * dy == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("points, weights, needle", [
    (np.zeros((2, 2)), None, "at least"),
    (np.c_[np.arange(9.0), np.zeros(9)], None, "spread"),
    (np.random.default_rng(0).normal(size=(9, 2)), -np.ones(9), "weights"),
])
def test_bad_density_input_is_a_value_error(points, weights, needle):
    with pytest.raises(ValueError, match=needle):
        weighted_density(points, weights)


def test_landscape_draws_energy_contours_and_states_the_bandwidth(tmp_path, monkeypatch, rng):
    pts, frames = two_groups(rng)
    ids = np.arange(len(pts))
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"average_id": ids, "pc_1": pts[:, 0], "pc_2": pts[:, 1]}).to_parquet(parts / "embed.parquet")
    pd.DataFrame({"average_id": ids, "run": 0, "model": ids, "n_frames": frames}).to_parquet(
        parts / "classify2d.parquet")
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "3_Landscape.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    contour = [t for t in spec["data"] if t["type"] == "contour"]
    assert len(contour) == 1
    z = decode_plotly_array(contour[0]["z"])
    x = decode_plotly_array(contour[0]["x"])
    i, j = np.unravel_index(np.nanargmin(z), z.shape)
    assert x[j] > 1.0                                        # weighted by n_frames
    note = " ".join(c.value for c in at.caption)
    assert "bandwidth σ" in note and "Scott" in note and "n_frames" in note
    at.checkbox(key="show_density").uncheck().run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert not [t for t in spec["data"] if t["type"] == "contour"]


def test_vae_latent_shows_the_density_along_z(tmp_path, monkeypatch):
    make_volume_workspace(tmp_path)
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "8_Volumes.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    curve = [t for t in spec["data"] if t.get("name") == "−log density"]
    assert len(curve) == 1 and curve[0]["yaxis"] == "y2"
    assert any("bandwidth σ = z_1" in c.value for c in at.caption)


def test_binned_density_for_many_averages_matches_the_exact_sum(rng):
    pts = np.vstack([rng.normal([-1.0, 0.5], [0.4, 0.2], size=(1500, 2)),
                     rng.normal([1.0, -0.5], 0.3, size=(1500, 2))])
    frames = rng.uniform(1, 50, len(pts))
    exact = weighted_density(pts, frames, direct_max=10_000)
    binned = weighted_density(pts, frames, direct_max=100)
    scale = exact.density.max()
    assert np.abs(binned.density - exact.density).max() < 0.02 * scale
    one_d = [weighted_density(pts[:, 0], frames, direct_max=m).density for m in (10_000, 100)]
    assert np.abs(one_d[0] - one_d[1]).max() < 0.02 * one_d[0].max()
