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
    assert at.radio(key="dims").value == "2D"  # box/lasso selection needs 2D: the default
    at.radio(key="dims").set_value("3D").run()
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
    at.selectbox(key="y").select("tsne_3").run()
    at.selectbox(key="color").select("n_frames").run()
    assert not at.exception
    scatter = json.loads(at.get("plotly_chart")[0].proto.spec)
    main = [t for t in scatter["data"] if t.get("name") != "selected" and t["type"] != "contour"]
    assert len(main) == 1 and main[0]["type"] in ("scatter", "scattergl")
    part = pd.read_parquet(workspace / "results/parts/embed.parquet")
    assert np.allclose(decode_plotly_array(main[0]["y"]), part["tsne_3"])
    assert scatter["layout"]["yaxis"]["title"]["text"] == "tsne_3"
    # picking another average shows its pattern and highlights it
    at.selectbox(key="average").select(107).run()
    assert not at.exception
    charts = at.get("plotly_chart")
    pattern = json.loads(charts[1].proto.spec)
    assert "#107" in pattern["layout"]["annotations"][0]["text"]
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


def _write_member_frames(workspace, frames, rng):
    """data/frames.h5 and results/frames.parquet: frame i belongs to average 100 + i % M,
    turned by a random multiple of 90 degrees.  Returns (frame ids, their average ids)."""
    from spicompute.io.frames import write_frames

    write_frames(workspace / "data" / "frames.h5", frames)
    fids = np.asarray(frames.frame_id)
    n = len(fids)
    avg_of = np.arange(n) % M + 100
    pd.DataFrame({"frame_id": fids, "run": 0, "average_id": avg_of,
                  "rotation_deg": rng.choice([0.0, 90.0, 180.0], n),
                  "posterior_max": rng.uniform(0.5, 1, n), "scale": 1.0}
                 ).to_parquet(workspace / "results" / "frames.parquet", index=False)
    return fids, avg_of


def test_diagnostics_banner_and_member_frames(workspace, small_simulation):
    """pc_1 made to follow occupancy -> a banner; member frames drawn from data/frames.h5."""
    frames = small_simulation[0]
    rng = np.random.default_rng(3)
    fids, avg_of = _write_member_frames(workspace, frames, rng)
    part = pd.read_parquet(workspace / "results/parts/embed.parquet")
    part["pc_1"] = np.arange(M) * 3.0 + 0.01 * rng.normal(size=M)  # = n_frames: a nuisance axis
    part.to_parquet(workspace / "results/parts/embed.parquet", index=False)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("pc_1 follows n_frames" in w.value for w in at.warning)
    assert not any("pc_2 follows" in w.value for w in at.warning)
    charts = at.get("plotly_chart")
    members = json.loads(charts[-1].proto.spec)
    heat = [t for t in members["data"] if t["type"] == "heatmap"]
    assert len(heat) == 6
    titles = [a["text"] for a in members["layout"]["annotations"]]
    shown = [int(t.split()[1]) for t in titles]
    assert set(avg_of[np.isin(fids, shown)]) == {100}
    # the frame is really the recorded one (rotation 0: the pixels are its counts)
    z = decode_plotly_array(heat[0]["z"]).astype(float)
    assert z.shape == frames.detector.shape and np.nanmax(z) > 0


def test_corrupt_embedding_and_metrics_give_messages(workspace):
    (workspace / "metrics" / "embed.json").write_text("{not json")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("embed.json" in w.value and "invalid JSON" in w.value for w in at.warning)
    raw = (workspace / "results/parts/embed.parquet").read_bytes()
    (workspace / "results/parts/embed.parquet").write_bytes(raw[: len(raw) // 3])
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("embed.parquet" in e.value and "unreadable Parquet" in e.value for e in at.error)


def test_a_component_that_follows_true_size_is_not_flagged(workspace, small_simulation):
    """Size is structure: an axis that tracks occupancy *and*, more closely, the members'
    true particle size is no nuisance axis (the default run's pc_3 does exactly this)."""
    import h5py

    rng = np.random.default_rng(4)
    fids, avg_of = _write_member_frames(workspace, small_simulation[0], rng)
    n = len(fids)
    part = pd.read_parquet(workspace / "results/parts/embed.parquet")
    # pc_1 rises with n_frames (= 3 x index, rho ~0.9) and is exactly the mean true size
    size_of_average = 40 + 0.1 * np.arange(M) + 0.2 * rng.normal(size=M)
    part["pc_1"] = size_of_average
    part.to_parquet(workspace / "results/parts/embed.parquet", index=False)
    with h5py.File(workspace / "data" / "truth.h5", "w") as h5:
        h5["truth/frame_id"] = fids
        h5["truth/melt_t"] = rng.uniform(0, 1, n)
        h5["truth/size_nm"] = size_of_average[avg_of - 100]
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    shown = at.expander[0].markdown[0].value
    assert "max \\|rho\\| shape" in shown and "| pc\\_1 |" in shown
    assert not any("pc_1 follows" in w.value for w in at.warning)
    # without the size reference (melt only) the same axis is flagged
    with h5py.File(workspace / "data" / "truth.h5", "a") as h5:
        del h5["truth/size_nm"]
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("pc_1 follows n_frames" in w.value for w in at.warning)


def test_unreproduced_component_is_named_next_to_the_nuisances(workspace, small_simulation):
    """metrics/embed.json component_stability -> stability column and a banner for the noise axis."""
    _write_member_frames(workspace, small_simulation[0], np.random.default_rng(5))
    stability = {"split": "runs", "n_half": [6, 6], "min_stability": 0.5, "components": {
        "pc_1": {"stability": 0.99, "null_q95": 0.4, "reproduced": True, "level_rho": 0.3, "flagged": False},
        "pc_2": {"stability": 0.93, "null_q95": 0.4, "reproduced": True, "level_rho": 0.6, "flagged": False},
        "pc_3": {"stability": 0.21, "null_q95": 0.38, "reproduced": False, "level_rho": 0.1, "flagged": True}}}
    (workspace / "metrics" / "embed.json").write_text(json.dumps(
        {"explained_variance_ratio": [0.5, 0.2, 0.1], "component_stability": stability}))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    banner = [w.value for w in at.warning if "not reproduced" in w.value]
    assert len(banner) == 1 and "pc_3 is not reproduced by disjoint run halves (|r| 0.21, null 0.38)" in banner[0]
    assert "pc_1 is not" not in banner[0] and "pc_2 is not" not in banner[0]
    table = at.expander[0].markdown[0].value
    assert "stability" in table and "0.21" in table and "0.99" in table
    # an older run without the metric: the table as before, no stability banner
    (workspace / "metrics" / "embed.json").write_text(json.dumps({"explained_variance_ratio": [0.5, 0.2, 0.1]}))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not any("not reproduced" in w.value for w in at.warning)
    assert "stability" not in at.expander[0].markdown[0].value


def test_the_page_says_what_the_common_lines_were_computed_on(workspace):
    from dashboard.data.diagnostics import landscape_settings_note

    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any(c.value == "Common lines: averages at their own size; not denoised." for c in at.caption)
    (workspace / "metrics" / "ccmatrix.json").write_text(json.dumps(
        {"q_min_nm": 0.0518, "q_max_nm": 0.5348, "size_normalise": False, "smooth_q_nm": 0.026}))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    note = [c.value for c in at.caption if c.value.startswith("Common lines")]
    assert note == ["Common lines: q 0.052–0.535 rad/nm; averages at their own size; "
                    "denoised by a Gaussian of 0.026 rad/nm (smooth_q_nm)."]
    assert "common size" in landscape_settings_note({"size_normalise": True})
