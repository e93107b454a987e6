"""The dashboard's export buttons (AppTest): Selections -> member frames as CXI / Dragonfly /
CSV and 'use this selection' (params.yaml or the `dvc exp run -S` command); Volumes ->
MRC + ChimeraX + GIF, and a trajectory between two averages."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from conftest import REPO  # tests/ is on sys.path (rootdir conftest)
from tests.dashboard.export_workspace import make_selection_workspace, make_vae_workspace

PAGES = REPO / "dashboard" / "pages"
@pytest.fixture()
def selection_workspace(tmp_path, monkeypatch, small_simulation):
    expected = make_selection_workspace(tmp_path, small_simulation[0])
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path, expected


def _submit(at, key_part: str):
    """Press a form's submit button (form fields set before it are sent with it)."""
    next(b for b in at.button if key_part in str(b.id)).click().run()


@pytest.mark.parametrize("fmt", ["cxi", "csv"])
def test_selection_frames_export(selection_workspace, fmt):
    root, expected = selection_workspace
    at = AppTest.from_file(str(PAGES / "6_Selections.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.radio(key="frames_format").set_value(fmt)
    _submit(at, "export_frames")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Wrote" in s.value for s in at.success)
    index = pd.read_csv(root / "exports" / ("pick.csv" if fmt == "csv" else "pick.cxi.frames.csv"))
    np.testing.assert_array_equal(index["frame_id"].to_numpy(), np.sort(expected))
    if fmt == "cxi":
        with h5py.File(root / "exports" / "pick.cxi", "r") as h5:
            assert h5["entry_1/data_1/data"].shape[0] == len(expected)


def test_selection_naming_missing_averages_is_a_one_line_error(selection_workspace):
    root, _ = selection_workspace
    (root / "selections" / "pick.json").write_text(json.dumps(
        {"name": "pick", "kind": "averages", "average_ids": [1, 99], "created_at": "2026-01-01",
         "note": ""}))
    at = AppTest.from_file(str(PAGES / "6_Selections.py"), default_timeout=60).run()
    assert not at.exception
    assert any("99" in e.value for e in at.error)          # named before any export is offered
    assert not (root / "exports").exists()


def test_use_selection_sets_params_and_shows_the_command(selection_workspace):
    root, _ = selection_workspace
    at = AppTest.from_file(str(PAGES / "6_Selections.py"), default_timeout=60).run()
    codes = [c.value for c in at.code]
    assert "dvc exp run -S select.mode=file -S select.file=selections/pick.json" in codes
    assert any("mode: family" in m.value for m in at.markdown)   # says what params holds now
    at.button(key="use_selection").click().run()
    assert not at.exception and not at.error
    text = (root / "params.yaml").read_text()
    assert yaml.safe_load(text)["select"] == {"mode": "file", "file": "selections/pick.json"}
    assert "a comment that must survive" in text and "# family | all | file" in text
    assert yaml.safe_load(text)["vae"] == {"latent_dim": 1}


@pytest.fixture()
def volume_workspace(tmp_path, monkeypatch):
    make_vae_workspace(tmp_path)
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def test_volumes_export_writes_mrc_series_and_gif(volume_workspace):
    import mrcfile

    at = AppTest.from_file(str(PAGES / "8_Volumes.py"), default_timeout=60).run()
    assert not at.exception, at.exception
    at.text_input(key="export_name").set_value("run1")
    _submit(at, "export_volumes")
    assert not at.exception and not at.error, [e.value for e in at.error]
    out = volume_workspace / "exports" / "run1"
    assert (out / "series.cxc").exists() and (out / "series.gif").exists()
    mrcs = sorted(out.glob("density_*.mrc"))
    assert len(mrcs) == 4
    with mrcfile.open(mrcs[0]) as m:
        assert m.data.shape == (15, 15, 15)
        assert float(m.voxel_size.x) == pytest.approx(50.0)      # 5 nm in Å


def test_volumes_export_refuses_a_bad_name(volume_workspace):
    at = AppTest.from_file(str(PAGES / "8_Volumes.py"), default_timeout=60).run()
    at.text_input(key="export_name").set_value("../escape")
    _submit(at, "export_volumes")
    assert not at.exception
    assert any("export name" in e.value for e in at.error)
    assert not (volume_workspace / "escape").exists()


def test_trajectory_between_two_averages_decodes_and_exports(volume_workspace):
    at = AppTest.from_file(str(PAGES / "8_Volumes.py"), default_timeout=60).run()
    at.selectbox(key="traj_a0").set_value(3)
    at.selectbox(key="traj_a1").set_value(11)
    at.slider(key="traj_n").set_value(5)
    _submit(at, "trajectory")
    assert not at.exception and not at.error, [e.value for e in at.error]
    with h5py.File(volume_workspace / "trajectories" / "path.h5", "r") as h5:
        z = h5["volumes/z"][:, 0]
    table = pd.read_parquet(volume_workspace / "results" / "parts" / "vae.parquet").set_index("average_id")
    assert z[0] == pytest.approx(table.loc[3, "z_1"], abs=1e-5)
    assert z[-1] == pytest.approx(table.loc[11, "z_1"], abs=1e-5)
    assert len(z) == 5 and np.all(np.diff(z) * np.sign(z[-1] - z[0]) > 0)
    assert len(list((volume_workspace / "exports" / "trajectory_path").glob("log10_intensity_*.mrc"))) == 5


def test_trajectory_with_the_same_average_twice_is_refused(volume_workspace):
    at = AppTest.from_file(str(PAGES / "8_Volumes.py"), default_timeout=60).run()
    at.selectbox(key="traj_a0").set_value(3)
    at.selectbox(key="traj_a1").set_value(3)
    _submit(at, "trajectory")
    assert not at.exception
    assert any("zero length" in e.value for e in at.error)
    assert not (volume_workspace / "trajectories" / "path.h5").exists()
