"""A workspace with one known asymmetric average, for the image-convention tests.

Four averages (ids 7..10) of L x L pixels on a q grid of DQ rad/nm: a bright spot at
SPOT = (row, column) with a weaker pixel to its left (a streak, so that a flip or a
transpose is unmistakable), one pixel (HOLE) never observed.  The orientation fit's
best slice is the average itself, so every page that draws an average, a reference slice
or the pair draws the same picture.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from spicompute.io.averages import AverageSet, write_averages

M, L, DQ = 4, 15, 0.05
C = L // 2
SPOT = (3, 11)     # (row, column): qy = -0.2, qx = +0.2 nm⁻¹; off both diagonals
HOLE = (12, 2)     # never observed
BLUR_OUT = [3.0, 6.0, 9.0, 12.0]   # per average (degrees); the VAE's class blur the run "used"
BLUR_IN = [2.0, 4.0, 5.0, 7.5]
VAE_BLUR = (10.5, 6.25)


def make_convention_workspace(root: Path) -> None:
    """Write data/averages.h5, data/orient.h5, the embed/orient part tables and metrics/vae.json under ``root``."""
    img = np.ones((L, L), np.float32)
    img[SPOT] = 100.0
    img[SPOT[0], SPOT[1] - 1] = 30.0
    stack = np.stack([img * (k + 1) for k in range(M)])
    weight = np.ones_like(stack)
    weight[:, HOLE[0], HOLE[1]] = 0
    ids = np.arange(M) + 7
    write_averages(root / "data" / "averages.h5",
                   AverageSet(stack, weight, ids, np.zeros(M), np.arange(M),
                              np.full(M, 10.0), DQ, 0.2))
    parts = root / "results" / "parts"
    parts.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pd.DataFrame({"average_id": ids, "pc_1": rng.normal(size=M), "pc_2": rng.normal(size=M),
                  "pc_3": rng.normal(size=M)}).to_parquet(parts / "embed.parquet")
    pd.DataFrame({"average_id": ids, "qw": 1.0, "qx": 0.0, "qy": 0.0, "qz": 0.0,
                  "best_cc": 0.8, "gain": np.linspace(1.1, 1.5, M),
                  "blur_out_deg": BLUR_OUT, "blur_in_deg": BLUR_IN}).to_parquet(parts / "orient.parquet")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "vae.json").write_text(json.dumps({"class_blur_deg": list(VAE_BLUR)}))
    with h5py.File(root / "data" / "orient.h5", "w") as h5:
        h5["average_id"] = ids
        h5["best_slice"] = stack
