"""The Landscape dashboard page (Streamlit AppTest on a tiny workspace)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, decode_plotly_array  # tests/ is on sys.path (rootdir conftest)
from spicompute.io.averages import AverageSet, write_averages

PAGE = str(REPO / "dashboard" / "pages" / "3_Landscape.py")
M, L = 12, 17


def embed_part(rng) -> pd.DataFrame:
    cols = {"average_id": np.arange(M) + 100}
    for method in ("pc", "isomap", "spectral", "tsne"):
        for k in (1, 2, 3):
            cols[f"{method}_{k}"] = rng.normal(size=M)
    cols["cluster"] = np.repeat([0, 1, 2], 4)
    cols["cluster_prob"] = rng.uniform(0.5, 1, M)
    return pd.DataFrame(cols)


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, size=(M, L, L)).astype(np.float32) * (np.arange(M) + 1)[:, None, None]
    weight = np.ones_like(img)
    weight[:, L // 2, L // 2] = 0  # beamstop pixel
    write_averages(tmp_path / "data" / "averages.h5",
                   AverageSet(img, weight, np.arange(M) + 100, np.repeat([0, 1], M // 2),
                              np.tile(np.arange(M // 2), 2), np.arange(M) * 3.0, 0.05, 0.2))
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    embed_part(rng).to_parquet(parts / "embed.parquet", index=False)
    pd.DataFrame({"average_id": np.arange(M) + 100, "run": np.repeat([0, 1], M // 2),
                  "model": np.tile(np.arange(M // 2), 2), "n_frames": np.arange(M) * 3.0}
                 ).to_parquet(parts / "classify2d.parquet", index=False)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "embed.json").write_text(json.dumps(
        {"explained_variance_ratio": [0.5, 0.2, 0.1], "silhouette": 0.61, "n_clusters": 3}))
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def test_landscape_from_parts_3d_scatter_and_pattern(workspace):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.metric[0].value == "12"
    assert at.metric[1].value == "80.0%"
    assert at.metric[2].value == "3"
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    scatter = json.loads(charts[0].proto.spec)
    traces = [t for t in scatter["data"] if t["type"] == "scatter3d" and t.get("name") != "selected"]
    assert len(traces) == 3  # one per cluster (categorical colour)
    xs = np.concatenate([decode_plotly_array(t["x"]) for t in traces])
    part = pd.read_parquet(workspace / "results/parts/embed.parquet")
    assert np.allclose(np.sort(xs), np.sort(part["pc_1"]))
    # the pattern of the first average, log scale, beamstop blank
    pattern = json.loads(charts[1].proto.spec)
    z = decode_plotly_array(pattern["data"][0]["z"]).astype(float)
    assert z.shape == (L, L) and np.isnan(z[L // 2, L // 2])
    img = at.session_state["average"]
    assert img == 100


def test_method_switch_2d_colour_and_selection(workspace):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.selectbox(key="method").select("tsne").run()
    at.radio(key="dims").set_value("2D").run()
    at.selectbox(key="y").select("tsne_3").run()
    at.selectbox(key="color").select("n_frames").run()
    assert not at.exception
    scatter = json.loads(at.get("plotly_chart")[0].proto.spec)
    main = [t for t in scatter["data"] if t.get("name") != "selected"]
    assert len(main) == 1 and main[0]["type"] in ("scatter", "scattergl")
    part = pd.read_parquet(workspace / "results/parts/embed.parquet")
    assert np.allclose(decode_plotly_array(main[0]["y"]), part["tsne_3"])
    assert scatter["layout"]["yaxis"]["title"]["text"] == "tsne_3"
    # picking another average shows its pattern and highlights it
    at.selectbox(key="average").select(107).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    pattern = json.loads(charts[1].proto.spec)
    assert "#107" in pattern["layout"]["title"]["text"]
    scatter = json.loads(charts[0].proto.spec)
    sel = [t for t in scatter["data"] if t.get("name") == "selected"][0]
    row = part[part["average_id"] == 107].iloc[0]
    assert np.isclose(decode_plotly_array(sel["x"])[0], row["tsne_1"])
    # brighter average -> larger log intensities than average 100
    z7 = decode_plotly_array(pattern["data"][0]["z"]).astype(float)
    at.selectbox(key="average").select(100).run()
    z0 = decode_plotly_array(json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]["z"])
    assert np.nanmean(z7) > np.nanmean(z0.astype(float))


def test_joined_table_preferred_and_missing_notice(workspace, tmp_path_factory, monkeypatch):
    rng = np.random.default_rng(1)
    joined = embed_part(rng).assign(n_frames=np.arange(M) * 3.0, gain=rng.uniform(1, 3, M))
    joined.to_parquet(workspace / "results" / "averages.parquet", index=False)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert "gain" in at.selectbox(key="color").options
    empty = tmp_path_factory.mktemp("empty")
    monkeypatch.setenv("SPI_WORKSPACE", str(empty))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("dvc repro embed" in info.value for info in at.info)
