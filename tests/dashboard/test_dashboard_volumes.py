"""Volumes page (AppTest): latent plots, a volume with its sections, projections, missing and corrupt files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO
from tests.dashboard.volume_workspace import make_volume_workspace, write_volumes

PAGE = str(REPO / "dashboard" / "pages" / "8_Volumes.py")


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    make_volume_workspace(tmp_path)
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def _charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_volumes_page_renders_every_view(workspace):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    specs = _charts(at)
    kinds = [t["type"] for s in specs for t in s["data"]]
    assert "isosurface" in kinds and kinds.count("heatmap") == 9  # 3 sections, 3 projections, 3 phased averages
    titles = " ".join([str(s["layout"].get("title", {}).get("text", "")) for s in specs] +
                      [a.get("text", "") for s in specs for a in s["layout"].get("annotations", [])])
    for name in ("<100>", "<110>", "<111>", "Fig. 5A", "Fig. 5D", "average 7"):
        assert name in titles
    assert any(m.label == "class blur" and m.value == "—" for m in at.metric)  # no metrics/vae.json here
    # moving the slider shows another volume
    at.select_slider(key="volume_index").set_value(3).run()
    assert not at.exception
    assert any("volume 3 of 4" in c.value for c in at.caption)


def test_class_blur_the_vae_used_is_shown(workspace):
    (workspace / "metrics").mkdir(exist_ok=True)
    (workspace / "metrics" / "vae.json").write_text(json.dumps({"class_blur_deg": [11.64, 7.27]}))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    assert any(m.label == "class blur" and m.value == "11.6° / 7.3°" for m in at.metric)


def test_saving_a_latent_point_writes_a_selection(workspace):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="latent_name").input("probe-1")
    at.text_input(key="latent_z").input("0.5")
    next(b for b in at.button if b.label == "Save selection").click().run()
    assert not at.exception
    saved = json.loads((workspace / "selections" / "probe-1.json").read_text())
    assert saved["kind"] == "latent_points" and saved["points"] == [[0.5]]
    at.text_input(key="latent_name").input("../escape")
    next(b for b in at.button if b.label == "Save selection").click().run()
    assert any("selection name" in e.value for e in at.error)
    assert not (workspace / "escape.json").exists()


def test_two_dimensional_latent_uses_a_2d_picker(workspace):
    write_volumes(workspace / "data" / "volumes.h5", d=2)
    vae = pd.read_parquet(workspace / "results/parts/vae.parquet")
    vae["z_2"] = -vae["z_1"]
    vae.to_parquet(workspace / "results/parts/vae.parquet")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    at.select_slider(key="pick_z2").set_value(1.0).run()
    assert not at.exception


def test_missing_outputs_name_the_stage(workspace):
    (workspace / "data" / "phased.h5").unlink()
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("dvc repro phase" in i.value for i in at.info)
    (workspace / "data" / "volumes.h5").unlink()
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("dvc repro volumes" in i.value for i in at.info)


def test_corrupt_volume_file_gives_a_message(workspace):
    (workspace / "data" / "volumes.h5").write_bytes(b"not hdf5 at all")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("volumes.h5" in e.value and "unreadable HDF5" in e.value for e in at.error)


def test_volume_to_nearest_averages_in_latent(workspace):
    table = pd.read_parquet(workspace / "results/parts/vae.parquet")
    with h5py.File(workspace / "data/volumes.h5", "r") as h5:
        z3 = float(h5["volumes/z"][3, 0])
    pd.DataFrame({"frame_id": np.arange(3 * len(table)), "average_id": np.tile(table["average_id"], 3),
                  "rotation_deg": 0.0, "posterior_max": 1.0}
                 ).to_parquet(workspace / "results/frames.parquet", index=False)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.select_slider(key="volume_index").set_value(3).run()
    at.slider(key="k_near").set_value(4).run()
    assert not at.exception
    near = next(d.value for d in at.dataframe if "latent_distance" in d.value.columns)
    expect = table.assign(d=(table["z_1"] - z3).abs()).nsmallest(4, "d")["average_id"]
    assert near["average_id"].tolist() == expect.tolist()
    assert any(m.value == "12" for m in at.metric)  # 3 member frames for each of 4 averages


def test_particle_volume_plot_draws_the_truth_line(workspace):
    """With results/volumes_truth.parquet (validate stage) the Fig. 5D plot carries V(t_hat)."""
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    fig5d = next(s for s in _charts(at) if "Fig. 5D" in str(s["layout"].get("title", {}).get("text", "")))
    assert [t["name"] for t in fig5d["data"]] == ["phased"]
    vt = pd.read_parquet(workspace / "results/volumes.parquet")
    pd.DataFrame({"volume_index": vt["volume_index"], "z_1": vt["z_1"], "t_hat": np.linspace(0, 1, len(vt)),
                  "true_volume_nm3": 74088.0 * (1 + 0.1 * np.linspace(0, 1, len(vt)))}
                 ).to_parquet(workspace / "results/volumes_truth.parquet")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    fig5d = next(s for s in _charts(at) if "Fig. 5D" in str(s["layout"].get("title", {}).get("text", "")))
    names = [t["name"] for t in fig5d["data"]]
    assert names == ["phased", "truth V(t̂)"]
    from tests.conftest import decode_plotly_array

    truth_y = decode_plotly_array(fig5d["data"][1]["y"])
    np.testing.assert_allclose(truth_y[[0, -1]], [74088.0, 81496.8])
    # validate's members' truth: a third line, the mean true volume of the particles at each z
    table = pd.read_parquet(workspace / "results/volumes_truth.parquet")
    table["members_volume_nm3"] = np.linspace(70000.0, 80000.0, len(table))
    table["members_melt"], table["members_size"] = np.linspace(0, 1, len(table)), 0.98
    table.to_parquet(workspace / "results/volumes_truth.parquet")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    fig5d = next(s for s in _charts(at) if "Fig. 5D" in str(s["layout"].get("title", {}).get("text", "")))
    assert [t["name"] for t in fig5d["data"]] == ["phased", "truth V(t̂)", "truth: the particles at z"]
    members_y = decode_plotly_array(fig5d["data"][2]["y"])
    np.testing.assert_allclose(members_y[[0, -1]], [70000.0, 80000.0])
    assert fig5d["data"][2]["text"][0].startswith("members' melt 0.00, size 0.980")
