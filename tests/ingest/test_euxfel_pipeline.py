"""`dvc repro` of the whole pipeline with data.input = a EuXFEL run directory.

The run is extra-data's mock AGIPD 1M proc layout (2 sequence files x 4 trains x 32 pulses)
with cube diffraction patterns injected into 120 of the 256 frames; the frames stage finds the
hits (auto threshold), writes only them, and every later stage runs on the unassembled
1M-pixel detector.  Workload sizes are reduced (models, runs, epochs); the q range of the 2D
classification is given in rad/nm (the mock particle's signal lies below ~1.2 rad/nm).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("extra_data")

from spicompute.io.euxfel import agipd_q, load_agipd_geometry  # noqa: E402
from spicompute.io.frames import read_frames  # noqa: E402
from tests.ingest.euxfel_mock import inject, make_proc_run  # noqa: E402
from tests.test_dvc_project import BIN, _run, copy_project, init_repo  # noqa: E402

pytestmark = pytest.mark.slow


def test_dvc_repro_on_a_euxfel_run(tmp_path):
    run = tmp_path / "r0142"
    run.mkdir()
    make_proc_run(run, n_seq=2, trains_per_seq=4, pulses=32)
    q = agipd_q(load_agipd_geometry(None), 705.0, 6.0)
    hits = np.arange(0, 240, 2)
    inject(run, hits, q, hits=hits, bg=1e-4, hit_photons=4000, edge_nm=42.0, seed=11)

    root = tmp_path / "project"
    params = copy_project(root)
    params["data"].update(input=str(run), distance_mm=705.0, photon_energy_kev=6.0)
    params["classify2d"].update(n_models=4, n_runs=3, max_iter=6, min_iter=3, q_max_nm=1.2,
                                grid_step_nm=0.04)
    params["embed"].update(methods=["pc"])
    params["regress"].update(max_epochs=8, patience=3)
    params["orient"].update(num_div=6, refine=False)
    params["vae"].update(epochs=2)
    params["volumes"].update(n_points=3)
    params["phase"].update(n_starts=1, n_dm=20, n_er=10, averages_2d=[])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    init_repo(root)
    _run([str(BIN / "dvc"), "repro"], root)

    metrics = json.loads((root / "metrics" / "frames.json").read_text())
    assert metrics["source"] == "euxfel" and metrics["frames_read"] == 256
    assert metrics["hits"] == len(hits)
    table = pd.read_parquet(root / "results" / "hits.parquet")
    np.testing.assert_array_equal(table.frame_id[table.is_hit], hits)
    frames = read_frames(root / "data" / "frames.h5")
    np.testing.assert_array_equal(frames.frame_id, hits)
    assert frames.n_pixels == 16 * 512 * 128
    per_frame = pd.read_parquet(root / "results" / "frames.parquet")
    assert set(per_frame.frame_id) <= set(hits)          # downstream frame ids map back to trains
    averages = pd.read_parquet(root / "results" / "averages.parquet")
    assert len(averages) == 3 * 4
    for col in ("pc_1", "nn_1", "gain", "z_1"):
        assert col in averages.columns and np.isfinite(averages[col]).all(), col
    assert (root / "data" / "volumes.h5").exists() and (root / "metrics" / "frames_lit_histogram.csv").exists()
    status = _run([str(BIN / "dvc"), "status"], root)
    assert "changed" not in status
