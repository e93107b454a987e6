"""The Averages dashboard page (Streamlit AppTest on a tiny workspace)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from spicompute.io.averages import AverageSet, write_averages
from conftest import REPO, decode_plotly_array  # tests/ is on sys.path (rootdir conftest)

PAGE = REPO / "dashboard" / "pages" / "2_Averages.py"
B, K, L = 2, 4, 15


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    M = B * K
    img = rng.gamma(2.0, size=(M, L, L)).astype(np.float32) * (np.arange(M) + 1)[:, None, None]
    weight = np.ones_like(img)
    weight[:, 0, :] = 0                                  # never observed row
    occupancy = np.array([5.0, 40.0, 12.0, 0.5, 30.0, 3.0, 22.0, 9.0])
    write_averages(tmp_path / "data" / "averages.h5",
                   AverageSet(img, weight, np.arange(M), np.repeat(np.arange(B), K),
                              np.tile(np.arange(K), B), occupancy, 0.05, 0.2))
    for run in range(B):
        folder = tmp_path / "dvclive/classify2d/plots/metrics" / f"run_{run}"
        folder.mkdir(parents=True)
        steps = np.arange(1, 6)
        (folder / "loglik.tsv").write_text(
            "step\tloglik\n" + "".join(f"{s}\t{-100 + 10 * s + run}\n" for s in steps))
        (folder / "model_change.tsv").write_text(
            "step\tmodel_change\n" + "".join(f"{s}\t{0.5 ** s}\n" for s in steps))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/classify2d.json").write_text(json.dumps({"n_averages": M}))
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def _spec(at, index):
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def _titles(spec) -> list[str]:
    """Facet titles in reading order (top row first, left to right)."""
    ann = sorted(spec["layout"]["annotations"], key=lambda a: (-round(a["y"], 3), a["x"]))
    return [a["text"] for a in ann]


def test_gallery_sorted_by_occupancy_and_log_scaled(workspace):
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert not at.exception
    assert at.metric[0].value == "8"
    gallery = _spec(at, 0)
    titles = _titles(gallery)
    assert titles[0].startswith("#1 ") and titles[1].startswith("#4 ")   # 40, then 30 frames
    # trace order follows the display order of the images (facet 0 = most occupied)
    first = decode_plotly_array(gallery["data"][0]["z"])
    assert first.shape == (L, L)
    assert np.all(np.isnan(first[0]))                    # unobserved row blank
    raw = 2.0 * 2                                         # gamma mean x (1 + 1)
    assert np.nanmax(first) < np.log10(raw * 50)          # log10 values, not raw intensities
    # run filter and sorting change the selection
    at.selectbox(key="run").select("1").run()
    titles = _titles(_spec(at, 0))
    assert len(titles) == K and all("run 1" in t for t in titles)
    assert titles[0].startswith("#4 ")
    at.selectbox(key="order").select("average_id").run()
    titles = _titles(_spec(at, 0))
    assert [t.split()[0] for t in titles] == ["#4", "#5", "#6", "#7"]


def test_convergence_curves_from_dvclive(workspace):
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    conv = _spec(at, 2)
    assert [t["name"] for t in conv["data"]] == ["run 0", "run 1"]
    np.testing.assert_allclose(decode_plotly_array(conv["data"][1]["y"]),
                               [-89, -79, -69, -59, -49])
    at.selectbox(key="metric").select("model_change").run()
    assert _spec(at, 2)["layout"]["yaxis"]["type"] == "log"


def test_class_quality_panel_shows_purity_and_brightness_sorting(workspace):
    (workspace / "metrics/classify2d.json").write_text(json.dumps({
        "n_averages": B * K, "photon_sorting_f": 47.25,
        "truth_sorting_f": {"fluence": 1.71, "scattering_strength": 215.6, "size_nm": 99.6},
        "shape_purity": {"emc_mean": 0.78, "naive_baseline": 0.66, "emc_minus_baseline": 0.12}}))
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert not at.exception
    shown = {m.label: m for m in at.metric}
    purity = shown["shape purity (simulation truth)"]
    assert purity.value == "0.78" and "+0.12" in purity.delta and "0.66" in purity.delta
    assert shown["photon sorting (ANOVA F of log photons between classes)"].value == "47.2"
    truth = shown["fluence sorting (simulation truth)"]
    assert truth.value == "1.7" and "216" in truth.delta


def test_no_class_quality_panel_without_those_metrics(workspace):
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert not at.exception
    assert "Class quality" not in [h.value for h in at.subheader]


def test_missing_averages_shows_notice(tmp_path, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGE), default_timeout=60).run()
    assert not at.exception
    assert any("classify2d" in i.value for i in at.info)
