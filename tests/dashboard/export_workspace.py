"""Workspaces for the export tests (AppTest and the real browser).

``make_selection_workspace``: a frames file, frame -> average assignments (average = frame_id
% 6), six averages and the saved selection ``pick`` of averages 1 and 4, with a params.yaml
whose comments must survive an edit.  ``make_vae_workspace``: the volume workspace of
``volume_workspace.py`` plus an untrained ``demo`` VAE and its preprocessing (what the
trajectory and export actions need).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.io.frames import write_frames
from tests.dashboard.volume_workspace import make_volume_workspace

PARAMS = """# the project's parameters (a comment that must survive)
select:                      # which averages train the VAE
  mode: family               # family | all | file
  file: ""                   # mode file: a selection under selections/
vae:
  latent_dim: 1
"""


def make_selection_workspace(root: Path, frames) -> np.ndarray:
    """Write the workspace under ``root`` from a FrameSet; returns the frame ids the
    selection ``pick`` holds (averages 1 and 4), in file order."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    write_frames(root / "data" / "frames.h5", frames)
    fid = frames.frame_id
    parts = root / "results" / "parts"
    parts.mkdir(parents=True)
    pd.DataFrame({"frame_id": fid, "run": 0, "average_id": fid % 6}).to_parquet(
        root / "results" / "frames.parquet", index=False)
    pd.DataFrame({"average_id": np.arange(6), "run": 0, "model": np.arange(6), "n_frames": 10.0,
                  "pc_1": np.linspace(-1, 1, 6)}).to_parquet(parts / "classify2d.parquet")
    (root / "selections").mkdir()
    (root / "selections" / "pick.json").write_text(json.dumps(
        {"name": "pick", "kind": "averages", "average_ids": [1, 4], "created_at": "2026-01-01",
         "note": ""}))
    (root / "params.yaml").write_text(PARAMS)
    return fid[(fid % 6 == 1) | (fid % 6 == 4)]


def make_vae_workspace(root: Path) -> None:
    """The volume workspace plus models/vae.pt (untrained, seeded) and models/vae.json."""
    import torch

    from spicompute.vae.data import Preprocessing
    from spicompute.vae.model import VAE, architecture

    make_volume_workspace(root)
    arch = architecture("demo", 1)
    torch.manual_seed(0)
    models = root / "models"
    models.mkdir()
    torch.save(VAE(arch).state_dict(), models / "vae.pt")
    q = np.linspace(0.0, 0.6, 30)
    prep = Preprocessing(input_size=27, volume_size=27, q_max_nm=0.5, q_min_nm=0.04, dq2_nm=0.5 / 13,
                         dq3_nm=0.5 / 13, wavelength_nm=0.2066, profile_q_nm=q.tolist(),
                         profile=(1.0 / (1 + (q / 0.1) ** 4)).tolist(), particle_size_nm=50.0,
                         log_floor=0.1, q_max_limits={})
    (models / "vae.json").write_text(json.dumps({"architecture": arch.to_dict(),
                                                 "preprocessing": prep.to_dict()}))
