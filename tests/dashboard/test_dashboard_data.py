"""The dashboard's data layer (dashboard/data/), tested without Streamlit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from dashboard.data import OutputCorrupt, OutputMissing, read_h5, read_json, read_table
from dashboard.data import compare, diagnostics, drill, runs, selections, tables
from tests.conftest import REPO
from tests.dashboard.dashboard_project import dvc, make_project


def test_data_layer_imports_no_streamlit():
    code = ("import sys, dashboard.data, dashboard.data.runs, dashboard.data.compare, "
            "dashboard.data.selections, dashboard.data.diagnostics, dashboard.data.drill, "
            "dashboard.data.tables; print('streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    assert out.stdout.strip() == "False"


def test_loaders_missing_corrupt_and_row_order(tmp_path):
    with pytest.raises(OutputMissing, match="not produced"):
        read_table(tmp_path / "nope.parquet")
    pd.DataFrame({"a": np.arange(50)}).to_parquet(tmp_path / "t.parquet")
    data = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(OutputCorrupt, match="cut.parquet: unreadable Parquet"):
        read_table(tmp_path / "cut.parquet")
    (tmp_path / "m.json").write_text("{bad")
    with pytest.raises(OutputCorrupt, match="invalid JSON"):
        read_json(tmp_path / "m.json")
    with h5py.File(tmp_path / "a.h5", "w") as h5:
        h5["x"] = np.arange(10) * 10
        h5["x"].attrs["unit"] = "nm"
    got = read_h5(tmp_path / "a.h5", ["x"], index=[7, 2, 7])
    assert got["x"].tolist() == [70, 20, 70] and got["__attrs__"]["x"]["unit"] == "nm"
    with pytest.raises(OutputCorrupt, match="'y' missing"):
        read_h5(tmp_path / "a.h5", ["y"])
    assert "y" not in read_h5(tmp_path / "a.h5", ["x", "y"], optional=("y",))
    raw = (tmp_path / "a.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[:300])
    with pytest.raises(OutputCorrupt, match="unreadable HDF5"):
        read_h5(tmp_path / "cut.h5", ["x"])


def test_averages_table_joins_parts_and_thin(tmp_path):
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"average_id": [3, 1, 2], "pc_1": [0.3, 0.1, 0.2]}).to_parquet(parts / "embed.parquet")
    pd.DataFrame({"average_id": [1, 2, 3], "n_frames": [10.0, 20.0, 30.0], "pc_1": [9, 9, 9]}
                 ).to_parquet(parts / "classify2d.parquet")
    t = tables.averages_table(tmp_path, "pc_1", "embed", ("classify2d", "orient"))
    assert t.set_index("average_id")["n_frames"].to_dict() == {1: 10.0, 2: 20.0, 3: 30.0}
    assert t.set_index("average_id")["pc_1"].to_dict() == {1: 0.1, 2: 0.2, 3: 0.3}
    assert tables.components(t, "pc") == ["pc_1"]
    big = pd.DataFrame({"average_id": np.arange(50_000), "pc_1": np.zeros(50_000)})
    small, thinned = tables.thin(big, keep_ids=[49_999])
    assert thinned and 20_000 <= len(small) <= 20_001 and 49_999 in set(small["average_id"])
    assert np.all(np.diff(small["average_id"].to_numpy()) > 0)
    assert tables.thin(big.iloc[:100])[1] is False


def test_procrustes_alignment_and_cluster_correspondence(rng):
    a = pd.DataFrame({"average_id": np.arange(40), "pc_1": rng.normal(size=40),
                      "pc_2": rng.normal(size=40), "cluster": np.repeat([0, 1, 2, 3], 10)})
    theta = 0.7
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    xy = 2.5 * a[["pc_1", "pc_2"]].to_numpy() @ rot + [4.0, -1.0]
    b = pd.DataFrame({"average_id": np.arange(40)[::-1], "pc_1": xy[::-1, 0], "pc_2": xy[::-1, 1],
                      "cluster": ((a["cluster"].to_numpy() + 1) % 4)[::-1]})
    aligned, rel = compare.align_landscapes(a, b, ["pc_1", "pc_2"])
    assert rel < 1e-9 and aligned["distance"].max() < 1e-9
    assert np.allclose(aligned["pc_1_other"], a["pc_1"])
    noisy = b.assign(pc_1=rng.normal(size=40))
    assert compare.align_landscapes(a, noisy, ["pc_1", "pc_2"])[1] > 0.3
    table = compare.cluster_correspondence(a, b)
    assert table["best match"].tolist() == [1, 2, 3, 0]
    assert np.allclose(table["jaccard"], 1.0)
    with pytest.raises(ValueError, match="in common"):
        compare.align_landscapes(a, b.assign(average_id=b["average_id"] + 100), ["pc_1", "pc_2"])


def test_selections_roundtrip_rename_delete_export(tmp_path):
    pts = [{"customdata": [5, 1]}, {"customdata": [2]}, {"customdata": [5]}, {"x": 1}]
    assert selections.ids_from_event(pts) == [2, 5]
    table = pd.DataFrame({"average_id": [1, 2, 3], "x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 5.0]})
    assert selections.ids_in_box(table, "x", "y", (0.5, 2.5), (0, 2)) == [2]
    path = selections.save(tmp_path, "melt-early", [5, 2, 2], note="<b>hi</b>")
    doc = json.loads(path.read_text())
    assert path == tmp_path / "selections" / "melt-early.json"
    assert doc["average_ids"] == [2, 5] and doc["kind"] == "averages"
    for bad in ("../evil", "/etc/passwd", "a/b", "", "x" * 80, ".hidden"):
        with pytest.raises(ValueError):
            selections.save(tmp_path, bad, [1])
    with pytest.raises(ValueError, match="empty"):
        selections.save(tmp_path, "empty", [])
    with pytest.raises(FileExistsError):
        selections.save(tmp_path, "melt-early", [1])
    new = selections.rename(tmp_path, "melt-early", "melt_2")
    assert not path.exists() and json.loads(new.read_text())["name"] == "melt_2"
    sel = selections.read_selection(new)
    frames = pd.DataFrame({"frame_id": [10, 11, 12, 13], "average_id": [2, 5, 7, -1]})
    avgs = pd.DataFrame({"average_id": [2, 5, 7]})
    assert selections.frame_ids(sel, avgs, frames)["frame_id"].tolist() == [10, 11]
    assert selections.frame_ids_csv(sel, avgs, frames).splitlines() == ["frame_id", "10", "11"]
    selections.delete(tmp_path, "melt_2")
    assert selections.list_selections(tmp_path / "selections") == []


def test_diagnostics_flag_an_occupancy_axis(rng):
    m = 200
    n_frames = rng.uniform(10, 300, m)
    shape = rng.normal(size=m)
    table = pd.DataFrame({"average_id": np.arange(m), "n_frames": n_frames,
                          "run": np.repeat([0, 1], m // 2),
                          "pc_1": np.log(n_frames) + 0.05 * rng.normal(size=m),
                          "pc_2": shape, "truth": shape + 0.1 * rng.normal(size=m)})
    frames = pd.DataFrame({"frame_id": np.arange(3 * m) + 1000,
                           "average_id": np.tile(np.arange(m), 3)})
    photons = np.arange(3 * m, dtype=float)
    per = diagnostics.mean_photons_per_average(frames, np.arange(3 * m)[::-1] + 1000, photons[::-1])
    assert per.loc[0] == pytest.approx((0 + m + 2 * m) / 3)
    diag = diagnostics.nuisance_correlations(table, ["pc_1", "pc_2"], per, shape_columns=("truth",))
    d = diag.set_index("component")
    assert d.loc["pc_1", "rho n_frames"] > 0.95 and d.loc["pc_1", "flag"]
    assert abs(d.loc["pc_2", "rho n_frames"]) < 0.3 and not d.loc["pc_2", "flag"]
    assert d.loc["pc_2", "max |rho| shape"] > 0.9
    msg = diagnostics.banner(diag)
    assert "pc_1 follows n_frames" in msg and "pc_2" not in msg
    # a run effect is caught by the correlation ratio
    shifted = table.assign(pc_2=table["pc_2"] + 5 * table["run"])
    assert diagnostics.nuisance_correlations(shifted, ["pc_2"]).loc[0, "eta run"] > 0.9
    assert diagnostics.banner(diagnostics.nuisance_correlations(table, ["pc_2"])) is None
    # the size scale is reported (not flagged as a nuisance): pc_2 here is a size axis
    sized = table.assign(size_scale=np.exp(0.05 * shape))
    diag = diagnostics.nuisance_correlations(sized, ["pc_1", "pc_2"], per, shape_columns=("truth",))
    assert diag.set_index("component").loc["pc_2", "rho size scale"] > 0.95
    assert diagnostics.size_axes(diag) == ["pc_2"] and diagnostics.size_axes(
        diagnostics.nuisance_correlations(table, ["pc_2"])) == []
    assert "pc_2" not in diagnostics.banner(diag)


def test_derotate_undoes_emc_rotation_and_nearest_latent():
    img = np.zeros((21, 21))
    img[10, 15] = 1.0  # qx = +5 px of the average
    # the frame is the average turned counter-clockwise by 90 deg: qx=+5 -> qy=+5
    frame = np.zeros((21, 21))
    frame[15, 10] = 1.0
    back = drill.derotate(frame, 90.0, (10.0, 10.0))
    assert back[10, 15] == 1.0 and np.nansum(back) == 1.0
    q = np.zeros((21 * 21, 3))
    rows, cols = np.divmod(np.arange(21 * 21), 21)
    q[:, 0], q[:, 1] = 0.02 * (cols - 9.5), 0.02 * (rows - 11.0)
    assert drill.beam_centre(q, (21, 21)) == pytest.approx((11.0, 9.5))
    # axes through the beam (an off-centre beam is not the array's middle row/column)
    q[:, 0] *= 1 + 0.01 * (rows - 11.0) ** 2       # flat-detector-like: qx depends on the row
    qx_axis, qy_axis = drill.detector_q_axes(q, (21, 21))
    np.testing.assert_allclose(qx_axis, 0.02 * (np.arange(21) - 9.5))
    np.testing.assert_allclose(qy_axis, 0.02 * (np.arange(21) - 11.0))
    t = pd.DataFrame({"average_id": [1, 2, 3, 4], "z_1": [0.0, 1.0, 2.0, np.nan]})
    near = drill.nearest_in_latent(t, [1.2], k=2)
    assert near["average_id"].tolist() == [2, 3]
    fr = pd.DataFrame({"frame_id": np.arange(10), "average_id": [1] * 6 + [2] * 4,
                       "posterior_max": np.linspace(0, 1, 10)})
    s = drill.sample_members(fr, 1, 3)
    assert len(s) == 3 and set(s["average_id"]) == {1}
    assert np.all(np.diff(s["posterior_max"]) <= 0)


def test_diff_and_runs_table():
    d = runs.diff({"a.x": 1, "a.y": "s", "m": 0.5}, {"a.x": 2, "a.y": "s", "n": 1})
    assert d.set_index("key")["change"].to_dict()["a.x"] == 1
    assert set(d["key"]) == {"a.x", "m", "n"}
    r = [runs.Run("workspace", "workspace", "workspace"), runs.Run("main", "a" * 40, "commit"),
         runs.Run("exp1", "b" * 40, "experiment")]
    table = runs.runs_table(".", r, {"a" * 40: {"p.k": 1}, "b" * 40: {"p.k": 2},
                                     "workspace": {"p.k": 1}},
                            {"b" * 40: {"metrics/embed.json:silhouette": 0.4},
                             "a" * 40: {"silhouette": 0.3}})
    assert table["changed params"].tolist() == ["", "(baseline)", "p.k=2"]
    assert table["silhouette"].tolist()[1:] == [0.3, 0.4]
    with pytest.raises(ValueError):
        runs.materialize(".", "a" * 40, "../x")


def test_revision_folders_are_a_bounded_cache(tmp_path):
    base = tmp_path / ".dvc" / "tmp" / "dashboard"
    for k in range(10):
        (base / f"{k:040x}").mkdir(parents=True)
        os.utime(base / f"{k:040x}", (1000 + k, 1000 + k))
    removed = runs.prune(tmp_path, keep=7)
    assert sorted(removed) == [f"{k:040x}" for k in range(3)]
    assert len(list(base.iterdir())) == 7


@pytest.mark.slow
@pytest.mark.slow
def test_runs_from_git_and_experiments(tmp_path):
    root = make_project(tmp_path / "proj")
    dvc(["exp", "run", "-q", "-S", "toy.shift=1", "-S", "toy.angle=40", "--name", "triple"], root)
    found = runs.list_runs(root, num=1)
    kinds = {r.name: r.kind for r in found}
    assert kinds.get("workspace") == "workspace" and kinds.get("triple") == "experiment"
    exp = next(r for r in found if r.name == "triple")
    base = next(r for r in found if r.kind == "commit")
    assert runs.params_of(root, exp.rev)["toy.shift"] == 1
    # HEAD's metrics are in git (cache: false, committed): the baseline is comparable
    assert runs.metric(runs.metrics_of(root, base.rev), "silhouette") == pytest.approx(0.5)
    assert runs.metric(runs.metrics_of(root, exp.rev), "silhouette") == pytest.approx(0.6)
    # outputs of a revision come out of the DVC cache, not from the workspace
    a = tables.averages_table(runs.run_dir(root, base.rev), "pc_1", "embed") \
        if runs.materialize(root, base.rev, "results/parts/embed.parquet").exists() else None
    b = pd.read_parquet(runs.materialize(root, exp.rev, "results/parts/embed.parquet"))
    work = pd.read_parquet(root / "results/parts/embed.parquet")
    assert np.allclose(b["pc_1"], work["pc_1"])  # the experiment's outputs are the workspace's
    assert not np.allclose(a["pc_1"], b["pc_1"])  # the baseline's come from the DVC cache
    aligned, rel = compare.align_landscapes(a, b, ["pc_1", "pc_2", "pc_3"])
    assert rel < 1e-6  # a pure rotation
    assert compare.cluster_correspondence(a, b)["best match"].tolist() == [1, 2, 0]
    assert not runs.materialize(root, base.rev, "results/none.parquet").exists()
    assert runs.output_info(root, base.rev, "results/parts/embed.parquet")[0]
    table = runs.runs_table(root, found, {r.rev: runs.params_of(root, r.rev) for r in found},
                            {r.rev: runs.metrics_of(root, r.rev) for r in found})
    assert "toy.angle=40, toy.shift=1" in set(table["changed params"])
