"""The default parameters run the whole pipeline (`dvc repro`) on three detector geometries.

Sizes and radii in params.yaml are physical or `auto`; this is the check that no default is
tuned to the embedded 129x129 detector: 101x101 with the beam off-centre, the embedded
129x129, and 255x255 unbinned.  Only workload sizes are reduced (frames, bootstrap runs,
training epochs, volumes along the line, phasing starts) -- no geometry-dependent parameter
is touched.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.test_dvc_project import BIN, _run, copy_project, init_repo

pytestmark = pytest.mark.slow

GEOMETRIES = {
    "101-off-centre": {"detector_size": 101, "beam_center_px": [44.0, 57.5]},
    "129-embedded": {},
    "255-unbinned": {"detector_size": 255, "binning": 1},
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_default_parameters_complete_dvc_repro(tmp_path, name):
    root = tmp_path / "project"
    params = copy_project(root)
    params["simulate"].update(GEOMETRIES[name], n_frames=700)
    # 3 runs: the regressor holds out one for validation and one for its test split
    params["classify2d"].update(n_runs=3, max_iter=4, min_iter=4)
    params["regress"].update(max_epochs=40, patience=10)
    params["vae"].update(epochs=2)
    params["volumes"].update(n_points=4)
    params["phase"].update(n_starts=2, averages_2d_count=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    init_repo(root)
    _run([str(BIN / "dvc"), "repro"], root)
    table = pd.read_parquet(root / "results" / "averages.parquet")
    assert len(table) == params["classify2d"]["n_runs"] * params["classify2d"]["n_models"]
    for col in ("pc_1", "nn_1", "gain", "z_1", "selected"):
        assert col in table.columns and table[col].notna().all(), col
    for stage in ("ccmatrix", "embed", "orient", "vae"):
        metrics = json.loads((root / "metrics" / f"{stage}.json").read_text())
        assert metrics, stage
    vae = json.loads((root / "metrics" / "vae.json").read_text())
    assert 0 < vae["q_min_nm"] < vae["q_max_nm"] <= vae["q_max_limits"]["grid_radius_nm"] + 1e-9
    assert (root / "data" / "volumes.h5").exists() and (root / "results" / "volumes.parquet").exists()
    assert np.isfinite(table["z_1"]).all()
