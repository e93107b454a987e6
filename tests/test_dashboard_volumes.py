"""Volumes page (AppTest): latent plots, a volume with its sections, projections, missing and corrupt files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import REPO

PAGE = str(REPO / "dashboard" / "pages" / "8_Volumes.py")
M, L, P = 30, 15, 4


def _volumes(path, d=1):
    c = L // 2
    a = np.arange(L) - c
    r2 = a[:, None, None] ** 2 + a[None, :, None] ** 2 + a[None, None, :] ** 2
    z = np.linspace(-1, 1, P)[:, None] if d == 1 else np.array([[x, y] for x in (-1, 1) for y in (-1, 1)], float)
    with h5py.File(path, "w") as h5:
        h5["volumes/intensity"] = np.stack([np.exp(-r2 / (8.0 + k)) for k in range(P)]).astype(np.float32)
        h5["volumes/z"] = z.astype(np.float32)
        h5.create_dataset("volumes/source", data=np.array(["line"] * P, dtype=object), dtype=h5py.string_dtype())
        obs = (r2 >= 1).astype(np.uint8)
        h5["volumes/observed"] = obs
        h5.attrs["dq_nm"] = 0.05
        h5.attrs["center"] = c
    return z


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True)
    ids = np.arange(M)
    pd.DataFrame({"average_id": ids, "z_1": rng.normal(size=M), "z_logvar_1": -2.0, "recon_loss": 0.1,
                  "vae_trained": ids % 5 != 0}).to_parquet(parts / "vae.parquet")
    pd.DataFrame({"average_id": ids, "pc_1": rng.normal(size=M), "pc_2": rng.normal(size=M),
                  "pc_3": rng.normal(size=M)}).to_parquet(parts / "embed.parquet")
    pd.DataFrame({"average_id": ids, "qw": 1.0, "qx": 0.0, "qy": 0.0, "qz": 0.0, "best_cc": 0.8,
                  "gain": rng.uniform(1, 2, M)}).to_parquet(parts / "orient.parquet")
    (tmp_path / "data").mkdir()
    z = _volumes(tmp_path / "data" / "volumes.h5")
    with h5py.File(tmp_path / "data" / "phased.h5", "w") as h5:
        dens = np.zeros((P, L, L, L), np.float32)
        dens[:, 5:10, 5:10, 5:10] = 1.0
        h5["phased/density"] = dens
        h5["phased/z"] = z
    pd.DataFrame({"volume_index": range(P), "z_1": z[:, 0], "particle_volume_nm3": np.linspace(7e4, 8e4, P),
                  "support_voxels": 125, "prtf_resolution_nm": 3.0}).to_parquet(tmp_path / "results" / "volumes.parquet")
    monkeypatch.setenv("SPI_WORKSPACE", str(tmp_path))
    return tmp_path


def _charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_volumes_page_renders_every_view(workspace):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, at.exception
    specs = _charts(at)
    kinds = [t["type"] for s in specs for t in s["data"]]
    assert "isosurface" in kinds and kinds.count("heatmap") == 6  # 3 sections + 3 projections
    titles = " ".join(str(s["layout"].get("title", {}).get("text", "")) for s in specs)
    for name in ("<100>", "<110>", "<111>", "Fig. 5A", "Fig. 5D"):
        assert name in titles
    # moving the slider shows another volume
    at.select_slider(key="volume_index").set_value(3).run()
    assert not at.exception
    assert any("volume 3 of 4" in c.value for c in at.caption)


def test_saving_a_latent_point_writes_a_selection(workspace):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="latent_name").input("probe-1")
    at.text_input(key="latent_z").input("0.5")
    at.button[0].click().run()
    assert not at.exception
    saved = json.loads((workspace / "selections" / "probe-1.json").read_text())
    assert saved["kind"] == "latent_points" and saved["points"] == [[0.5]]
    at.text_input(key="latent_name").input("../escape")
    at.button[0].click().run()
    assert any("selection name" in e.value for e in at.error)
    assert not (workspace / "escape.json").exists()


def test_two_dimensional_latent_uses_a_2d_picker(workspace):
    _volumes(workspace / "data" / "volumes.h5", d=2)
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
    assert any("Could not read data/volumes.h5" in e.value for e in at.error)
