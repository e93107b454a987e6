"""Selections back to the data: export-frames writes exactly the member frames of the
selected averages, and `spicompute frames` ingests the CXI / Dragonfly files back to the
same counts; run ids for EuXFEL-style inputs; bad selections are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from spicompute.cli import main
from spicompute.io.frames import read_frames, write_frames
from tests.conftest import REPO, run_stages


@pytest.fixture()
def run_dir(tmp_path, small_simulation):
    frames, _, _ = small_simulation
    (tmp_path / "data").mkdir()
    write_frames(tmp_path / "data" / "frames.h5", frames)
    fid = frames.frame_id
    run0 = pd.DataFrame({"frame_id": fid, "run": 0, "average_id": fid % 6})
    run1 = pd.DataFrame({"frame_id": fid[::2], "run": 1, "average_id": 6 + (fid[::2] // 40) % 6})
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    pd.concat([run0, run1]).to_parquet(tmp_path / "results" / "frames.parquet", index=False)
    pd.DataFrame({"average_id": np.arange(12), "run": np.repeat([0, 1], 6), "model": np.tile(np.arange(6), 2),
                  "n_frames": 10.0, "pc_1": np.linspace(-1, 1, 12)}).to_parquet(parts / "classify2d.parquet")
    (tmp_path / "selections").mkdir()
    (tmp_path / "selections" / "pick.json").write_text(json.dumps(
        {"name": "pick", "kind": "averages", "average_ids": [1, 8]}))
    pd.DataFrame({"frame_id": fid, "run": 17, "train_id": 1000 + fid // 10, "pulse_id": fid % 10,
                  "lit_pixels": 5, "photons": 100, "is_hit": True}).to_parquet(tmp_path / "results" / "hits.parquet")
    expected = np.union1d(fid[fid % 6 == 1], fid[::2][(fid[::2] // 40) % 6 == 2])
    return tmp_path, frames, expected


def export(root, fmt, out, selection="pick"):
    return main(["export-frames", "--selection", selection, "--selections", str(root / "selections"),
                 "--format", fmt, "--out", str(out), "--frames", str(root / "data/frames.h5"),
                 "--frames-table", str(root / "results/frames.parquet"),
                 "--parts", str(root / "results/parts/classify2d.parquet"),
                 "--hits", str(root / "results/hits.parquet"), "-q"])


def ingest(tmp_path, data: dict):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    run_stages(tmp_path, params, ("frames",))
    return read_frames(tmp_path / "data" / "frames.h5")


@pytest.mark.parametrize("fmt", ["cxi", "dragonfly"])
def test_exported_selection_ingests_to_exactly_the_selected_frames(run_dir, tmp_path_factory, fmt):
    root, frames, expected = run_dir
    out = root / "exports" / ("pick.cxi" if fmt == "cxi" else "pick.emc")
    assert export(root, fmt, out) == 0
    mapping = pd.read_csv(str(out) + ".frames.csv")
    np.testing.assert_array_equal(mapping["frame_id"], expected)
    np.testing.assert_array_equal(mapping["train_id"], 1000 + expected // 10)
    back_dir = tmp_path_factory.mktemp(f"ingest_{fmt}")
    data = {"input": str(out)}
    if fmt == "dragonfly":
        data.update(detector=str(out.with_name("pick_detector.h5")), wavelength_nm=frames.detector.wavelength_nm)
    back = ingest(back_dir, data)
    assert back.n_frames == len(expected)
    row = {f: i for i, f in enumerate(frames.frame_id)}
    original = frames.dense([row[f] for f in expected])
    np.testing.assert_array_equal(back.dense(), original)
    np.testing.assert_allclose(back.detector.q, frames.detector.q, rtol=1e-5, atol=1e-6)


def test_csv_export_carries_run_ids(run_dir):
    root, _, expected = run_dir
    assert export(root, "csv", root / "ids.csv") == 0
    table = pd.read_csv(root / "ids.csv")
    assert list(table.columns) == ["export_index", "frame_id", "run", "train_id", "pulse_id"]
    np.testing.assert_array_equal(table["frame_id"], expected)
    assert (table["run"] == 17).all()


@pytest.mark.parametrize("payload,needle", [
    ({"name": "bad", "kind": "averages", "average_ids": [1, 99]}, "average_ids: 1 averages are not in this run"),
    ({"name": "bad", "kind": "latent_points", "points": [[0.1]]}, "kind: frames come from an averages selection"),
])
def test_bad_selections_are_one_line_errors(run_dir, capsys, payload, needle):
    root, _, _ = run_dir
    (root / "selections" / "bad.json").write_text(json.dumps(payload))
    out = root / "bad.cxi"
    rc = export(root, "cxi", out, selection="bad")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_frames_missing_from_the_run_are_named(run_dir, capsys):
    root, _, _ = run_dir
    table = pd.read_parquet(root / "results/frames.parquet")
    table.loc[table.index[1], "frame_id"] = 10_000  # a member frame the frames file does not hold
    table.to_parquet(root / "results/frames.parquet", index=False)
    rc = export(root, "cxi", root / "x.cxi")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "frames/frame_id" in err[0] and "10000" in err[0], err
    assert not (root / "x.cxi").exists()
