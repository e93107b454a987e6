"""Orientation and Regressor dashboard pages (Streamlit AppTest on tiny files)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from spicompute.io.averages import AverageSet, write_averages
from tests.conftest import REPO, decode_plotly_array

PAGES = REPO / "dashboard" / "pages"
M, L = 12, 17


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ids = np.arange(M) + 500
    img = rng.gamma(2.0, size=(M, L, L)).astype(np.float32)
    write_averages(tmp_path / "data" / "averages.h5",
                   AverageSet(img, np.ones_like(img), ids, np.zeros(M), np.arange(M), np.ones(M), 0.05, 0.2))
    gain = np.linspace(1.05, 1.8, M)
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"average_id": ids, "qw": 1.0, "qx": 0.0, "qy": 0.0, "qz": 0.0,
                  "best_cc": np.linspace(0.5, 0.9, M), "gain": gain}).to_parquet(parts / "orient.parquet")
    pcs = rng.normal(size=(M, 3))
    pd.DataFrame({"average_id": ids, "pc_1": pcs[:, 0], "pc_2": pcs[:, 1], "pc_3": pcs[:, 2]}).to_parquet(
        parts / "embed.parquet")
    pd.DataFrame({"average_id": ids, "nn_1": pcs[:, 0] + 0.1, "nn_2": pcs[:, 1], "nn_3": pcs[:, 2],
                  "split": ["train"] * 9 + ["val"] * 3}).to_parquet(parts / "regress.parquet")
    with h5py.File(tmp_path / "data" / "orient.h5", "w") as h5:
        h5["average_id"] = ids
        h5["best_slice"] = (np.arange(M, dtype=np.float32)[:, None, None] + 1) * np.ones((M, L, L), np.float32)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "regress.json").write_text(json.dumps({
        "validation": {"mse": {"pc_1": 0.1, "pc_2": 0.05, "pc_3": 0.04},
                       "r2": {"pc_1": 0.9, "pc_2": 0.92, "pc_3": 0.95}},
        "n_train": 9, "n_val": 3, "n_features": 120}))
    live = tmp_path / "dvclive" / "regress" / "plots" / "metrics"
    live.mkdir(parents=True)
    for name in ("train_loss", "val_loss"):
        pd.DataFrame({"step": range(5), name: np.linspace(1, 0.2, 5)}).to_csv(live / f"{name}.tsv", sep="\t",
                                                                              index=False)
    placed = tmp_path / "results" / "placed"
    placed.mkdir()
    pd.DataFrame({"average_id": [1, 2], "run": 0, "model": [0, 1], "nn_1": [0.1, 0.2], "nn_2": [0.3, 0.4],
                  "nn_3": [0.0, 0.1]}).to_parquet(placed / "subset.parquet")
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def test_orientation_page(workspace):
    at = AppTest.from_file(str(PAGES / "4_Orientation.py"), default_timeout=60).run()
    assert not at.exception
    assert at.metric[0].value == str(M)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3
    assert charts[0]["data"][0]["type"] == "histogram"
    scatter = charts[1]["data"][0]
    assert np.allclose(np.sort(decode_plotly_array(scatter["y"])), np.linspace(1.05, 1.8, M))
    # default selection is the highest-gain average; its best slice (value M) is drawn
    heat = charts[2]["data"][1]
    assert np.allclose(decode_plotly_array(heat["z"]), np.log10(M))
    at.selectbox(key="orient_average").select(500).run()
    heat = json.loads(at.get("plotly_chart")[2].proto.spec)["data"][1]
    assert np.allclose(decode_plotly_array(heat["z"]), 0.0)


def test_orientation_page_shows_the_class_blur_and_what_the_vae_used(workspace):
    parts = workspace / "results" / "parts"
    t = pd.read_parquet(parts / "orient.parquet")
    t["blur_out_deg"] = np.linspace(4.0, 15.0, M)
    t["blur_in_deg"] = 6.5
    t.to_parquet(parts / "orient.parquet")
    (workspace / "metrics" / "vae.json").write_text(json.dumps({"class_blur_deg": [11.6, 7.3]}))
    at = AppTest.from_file(str(PAGES / "4_Orientation.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 4
    blur = charts[2]
    assert [tr["name"] for tr in blur["data"]] == ["out of plane (detector axes)", "in plane (beam axis)"]
    assert np.allclose(np.sort(decode_plotly_array(blur["data"][0]["y"])), np.linspace(4.0, 15.0, M))
    assert sorted(sh["y0"] for sh in blur["layout"]["shapes"]) == [7.3, 11.6]
    # the chosen (highest-gain) average's caption names its blur
    assert any("class blur 15.0° out of plane / 6.5° in plane" in c.value for c in at.caption)


def test_orientation_page_names_the_averages_the_vae_slices_at_random(workspace):
    ids = np.arange(M) + 500
    fitted = np.ones(M, bool)
    fitted[:3] = False   # the three lowest gains are round
    pd.DataFrame({"average_id": ids, "z_1": np.linspace(-1, 1, M), "anisotropy": np.where(fitted, 0.8, 0.012),
                  "orientation_fitted": fitted}).to_parquet(workspace / "results" / "parts" / "vae.parquet")
    at = AppTest.from_file(str(PAGES / "4_Orientation.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("3 averages are round") for c in at.caption)
    # the highest-gain average keeps its orientation; a round one says the VAE does not use it
    assert not any("random orientation, not this one" in c.value for c in at.caption)
    at.selectbox(key="orient_average").select(500).run()
    assert any("round (anisotropy 0.012): the VAE slices it at a random orientation, not this one" in c.value
               for c in at.caption)


def test_orientation_page_without_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "4_Orientation.py"), default_timeout=60).run()
    assert not at.exception
    assert any("dvc repro orient" in i.value for i in at.info)


def test_regressor_page(workspace):
    at = AppTest.from_file(str(PAGES / "5_Regressor.py"), default_timeout=60).run()
    assert not at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 3  # curves, predicted vs CLPCA, placed overlay
    assert {t["name"] for t in charts[0]["data"]} == {"train_loss", "val_loss"}
    overlay = charts[2]["data"]
    assert overlay[1]["name"].startswith("subset.parquet")
    assert np.allclose(decode_plotly_array(overlay[1]["x"]), [0.1, 0.2])
    at.selectbox(key="placed_axes").select("2 vs 3").run()
    overlay = json.loads(at.get("plotly_chart")[2].proto.spec)["data"]
    assert np.allclose(decode_plotly_array(overlay[1]["x"]), [0.3, 0.4])
    assert not at.exception


def test_regressor_page_without_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(PAGES / "5_Regressor.py"), default_timeout=60).run()
    assert not at.exception
    assert any("dvc repro regress" in i.value for i in at.info)
