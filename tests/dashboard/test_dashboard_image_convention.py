"""One image convention on every page: the same asymmetric average, drawn by the Averages,
Landscape and Orientation pages, puts its bright pixel at the same (qx, qy) in nm⁻¹,
with qy increasing upwards and unobserved pixels left undrawn (NaN); on the Volumes
page a voxel off every symmetry axis lands at the same place in the <100> central
section and the <100> projection."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, decode_plotly_array  # tests/ is on sys.path (rootdir conftest)
from tests.dashboard.convention_workspace import C, DQ, HOLE, L, SPOT, make_convention_workspace
from tests.dashboard.volume_workspace import L as VL, make_volume_workspace

PAGES = REPO / "dashboard" / "pages"


def heatmaps(at) -> list[tuple[dict, dict]]:
    """(trace, layout) of every heatmap drawn on the page."""
    out = []
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        out += [(t, spec["layout"]) for t in spec["data"] if t["type"] == "heatmap"]
    return out


def bright_spot(trace: dict) -> tuple[float, float]:
    """The plot coordinates (x, y) of the largest finite value of a heatmap trace."""
    z = decode_plotly_array(trace["z"])
    x, y = decode_plotly_array(trace["x"]), decode_plotly_array(trace["y"])
    i, j = np.unravel_index(np.nanargmax(z), z.shape)
    return float(x[j]), float(y[i])


def axis_of(layout: dict, trace: dict, letter: str) -> dict:
    ref = trace.get(f"{letter}axis", letter)
    return layout.get(f"{letter}axis{ref[1:]}", {})


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    make_convention_workspace(tmp_path)
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("page", ["2_Averages.py", "3_Landscape.py", "4_Orientation.py"])
def test_the_same_pixel_lands_at_the_same_q_on_every_page(workspace, page):
    at = AppTest.from_file(str(PAGES / page), default_timeout=60).run()
    assert not at.exception, at.exception
    drawn = heatmaps(at)
    assert drawn, f"{page} drew no image"
    want = ((SPOT[1] - C) * DQ, (SPOT[0] - C) * DQ)
    for trace, layout in drawn:
        assert bright_spot(trace) == pytest.approx(want, abs=1e-9)
        # axes in nm⁻¹, y upwards (never reversed), x to the right
        xa, ya = axis_of(layout, trace, "x"), axis_of(layout, trace, "y")
        assert ya.get("autorange") != "reversed" and xa.get("autorange") != "reversed"
        z = decode_plotly_array(trace["z"])
        assert np.isnan(z[HOLE]) and np.isfinite(z[SPOT])      # unobserved: not drawn
        assert np.isfinite(z).sum() == L * L - 1
    titles = " ".join(a.get("title", {}).get("text", "") for _, lay in drawn
                      for k, a in lay.items() if k.startswith(("xaxis", "yaxis")))
    assert "qx (nm⁻¹)" in titles and "qy (nm⁻¹)" in titles


def test_negative_control_a_transposed_image_is_caught(workspace):
    """The check above can fail: the transpose of the average puts the spot elsewhere."""
    from dashboard.figures import image_grid

    img = np.ones((L, L))
    img[SPOT] = 100.0
    fig = json.loads(image_grid([img.T], ["t"], DQ).to_json())
    assert bright_spot(fig["data"][0]) != pytest.approx(((SPOT[1] - C) * DQ, (SPOT[0] - C) * DQ))


def test_volume_section_and_projection_agree(tmp_path, monkeypatch):
    make_volume_workspace(tmp_path)
    c = VL // 2
    voxel = (c + 2, c - 3, c)          # in the <100> central plane, off every symmetry axis
    with h5py.File(tmp_path / "data" / "volumes.h5", "r+") as h5:
        vol = np.full(h5["volumes/intensity"].shape, 1e-3, np.float32)
        vol[(slice(None),) + voxel] = 10.0
        h5["volumes/intensity"][...] = vol
        h5["volumes/observed"][...] = 1
    with h5py.File(tmp_path / "data" / "phased.h5", "r+") as h5:
        dens = np.zeros(h5["phased/density"].shape, np.float32)
        dens[(slice(None),) + voxel] = 1.0
        h5["phased/density"][...] = dens
        h5["phased"].attrs["dx_nm"] = 5.0
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "8_Volumes.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    specs = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    section = projection = None
    for spec in specs.values():
        notes = [a.get("text", "") for a in spec["layout"].get("annotations", [])]
        for trace, note in zip([t for t in spec["data"] if t["type"] == "heatmap"], notes):
            if note == "<100> central section":
                section = bright_spot(trace)
            elif note == "projection along <100>":
                projection = bright_spot(trace)
    assert section is not None and projection is not None
    # same voxel offsets from the centre: q / dq for the section, x / dx for the projection
    assert (section[0] / 0.05, section[1] / 0.05) == pytest.approx(
        (projection[0] / 5.0, projection[1] / 5.0), abs=1e-6)
    assert section != pytest.approx((0.0, 0.0))
