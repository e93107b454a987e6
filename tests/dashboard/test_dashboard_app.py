"""Dashboard home page and frames page (Streamlit AppTest, no browser)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from spicompute.io.frames import write_frames
from spicompute.io.truth import write_truth
from tests.conftest import REPO, decode_plotly_array

APP = str(REPO / "dashboard" / "app.py")


@pytest.fixture()
def workspace(tmp_path, monkeypatch, small_simulation):
    frames, truth, _ = small_simulation
    write_frames(tmp_path / "data" / "frames.h5", frames)
    write_truth(tmp_path / "data" / "truth.h5", truth)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "embed.json").write_text(json.dumps({"explained_variance": 0.42}))
    (tmp_path / "params.yaml").write_text("simulate:\n  n_frames: 300\n")
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def test_home_lists_outputs_and_metrics(workspace):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "SPI Landscape"
    outputs = at.dataframe[0].value
    row = outputs[outputs["output"] == "data/frames.h5"].iloc[0]
    assert row["size"] != "—"
    assert outputs[outputs["output"] == "data/ccmatrix.h5"].iloc[0]["modified"] == \
        "not produced yet"
    metrics = at.dataframe[1].value
    assert "explained_variance" in set(metrics["metric"])


def test_home_without_outputs_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("dvc repro" in info.value for info in at.info)


def test_frames_page_shows_log_frames_with_grey_mask_and_histogram(workspace, small_simulation):
    frames = small_simulation[0]
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/1_Frames.py").run()
    assert not at.exception
    assert at.metric[0].value == f"{frames.n_frames:,}"
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    spec = json.loads(charts[0].proto.spec)
    heatmaps = [t for t in spec["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 6
    z = decode_plotly_array(heatmaps[0]["z"]).astype(float)
    assert np.isnan(z).sum() == (~frames.detector.mask).sum()  # masked -> NaN -> grey background
    assert spec["layout"]["plot_bgcolor"] == "#888888"
    hist = json.loads(charts[1].proto.spec)
    assert {t["name"] for t in hist["data"]} == {"cube", "melt", "sphere", "dimer", "rod", "aggregate"}
    at.slider[0].set_value(3).run()
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len([t for t in spec["data"] if t["type"] == "heatmap"]) == 3


def test_frames_page_marks_the_hit_strength_cut(workspace):
    (workspace / "metrics" / "classify2d.json").write_text(json.dumps(
        {"resolved_min_photons": 250.0, "resolved_n_weak_frames": 17}))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/1_Frames.py").run()
    assert not at.exception
    hist = json.loads(at.get("plotly_chart")[1].proto.spec)
    lines = [s for s in hist["layout"].get("shapes", []) if s.get("type") == "line"]
    assert len(lines) == 1 and lines[0]["x0"] == lines[0]["x1"] == 250.0
    assert any("17 frames with fewer than 250 photons" in c.value for c in at.caption)
    # no cut: no line, no caption
    (workspace / "metrics" / "classify2d.json").write_text(json.dumps({"resolved_min_photons": 0.0}))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/1_Frames.py").run()
    hist = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert not hist["layout"].get("shapes") and not any("min_photons" in c.value for c in at.caption)


def test_frames_page_without_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/1_Frames.py").run()
    assert not at.exception
    assert any("dvc repro frames" in info.value for info in at.info)
