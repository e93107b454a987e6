"""A tiny workspace with VAE, volume and phasing outputs (dashboard tests, AppTest and browser)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

M, L, P = 30, 15, 4


def write_volumes(path, d=1):
    """A volumes.h5 with P Gaussian blobs at latent points on a line (d = 1) or a 2x2 grid (d = 2)."""
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


def make_volume_workspace(tmp_path):
    """Write results/parts/{vae,embed,orient}.parquet, data/volumes.h5, data/phased.h5, results/volumes.parquet."""
    rng = np.random.default_rng(0)
    parts = tmp_path / "results" / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    ids = np.arange(M)
    pd.DataFrame({"average_id": ids, "z_1": rng.normal(size=M), "z_logvar_1": -2.0, "recon_loss": 0.1,
                  "vae_trained": ids % 5 != 0}).to_parquet(parts / "vae.parquet")
    pd.DataFrame({"average_id": ids, "pc_1": rng.normal(size=M), "pc_2": rng.normal(size=M),
                  "pc_3": rng.normal(size=M)}).to_parquet(parts / "embed.parquet")
    pd.DataFrame({"average_id": ids, "qw": 1.0, "qx": 0.0, "qy": 0.0, "qz": 0.0, "best_cc": 0.8,
                  "gain": rng.uniform(1, 2, M)}).to_parquet(parts / "orient.parquet")
    (tmp_path / "data").mkdir(exist_ok=True)
    z = write_volumes(tmp_path / "data" / "volumes.h5")
    with h5py.File(tmp_path / "data" / "phased.h5", "w") as h5:
        dens = np.zeros((P, L, L, L), np.float32)
        dens[:, 5:10, 5:10, 5:10] = 1.0
        h5["phased/density"] = dens
        h5["phased/z"] = z
        h5.attrs["dx_nm"] = 5.0
        h5["averages2d/density"] = np.pad(np.ones((3, 5, 5), np.float32), ((0, 0), (5, 5), (5, 5)))
        h5["averages2d/average_id"] = np.array([0, 4, 7])
    pd.DataFrame({"volume_index": range(P), "z_1": z[:, 0], "particle_volume_nm3": np.linspace(7e4, 8e4, P),
                  "support_voxels": 125, "prtf_resolution_nm": 3.0}).to_parquet(tmp_path / "results" / "volumes.parquet")
    return tmp_path
