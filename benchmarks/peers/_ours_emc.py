"""Time spicompute's 2D EMC on a Dragonfly photon + detector file (run by bench_peers.py).

Runs in the project's Python with PYTHONPATH set to the checkout being timed; prints
one JSON object (per-iteration seconds, load average, final log-likelihood per frame).

    python _ours_emc.py PHOTONS DETECTOR WAVELENGTH_NM K R ITERATIONS THREADS OUT.npz
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(argv) -> int:
    photons, detector, wl, k, r, n_iter, threads, out = argv
    import torch

    torch.set_num_threads(int(threads))
    import spicompute
    from spicompute.execution import tune_malloc

    tune_malloc()   # as the spicompute CLI does before every stage
    from spicompute.emc2d.run import EMCConfig, initial_models, run_emc, usable_counts
    from spicompute.emc2d.steps import build_rotation_grid
    from spicompute.io.dragonfly import read_dragonfly_photons

    t0 = time.perf_counter()
    frames = read_dragonfly_photons(photons, detector, float(wl))
    t_ingest = time.perf_counter() - t0
    cfg = EMCConfig(n_models=int(k), n_rot=int(r), n_runs=1, subset_fraction=1.0,
                    max_iter=int(n_iter), min_iter=int(n_iter), tol=0.0, device="cpu")
    t0 = time.perf_counter()
    grid = build_rotation_grid(frames.detector, cfg.n_rot)
    counts, phot = usable_counts(frames, grid)
    keep = phot > 0
    counts = counts[keep]
    init = initial_models(grid, counts, phot[keep], cfg.n_models, np.random.default_rng(0))
    t_setup = time.perf_counter() - t0
    records = []
    state = run_emc(counts, grid, cfg, init, on_iteration=records.append)
    models = getattr(state, "models", None)
    if models is not None:
        import h5py

        from spicompute.geometry import wavenumber

        with h5py.File(detector, "r") as h5:        # Dragonfly voxel -> rad/nm, as the reader
            ewald_rad = float(np.asarray(h5["ewald_rad"][()]).reshape(-1)[0])
        step_vox = grid.dq_nm / (wavenumber(float(wl)) / ewald_rad)
        # models (K, L, L) indexed [k, i (qy), j (qx)]; grid step in Dragonfly voxels
        np.savez_compressed(out, models=np.asarray(models).reshape(-1, grid.size, grid.size),
                            step_vox=step_vox)
    print(json.dumps({
        "spicompute_file": spicompute.__file__, "frames": int(counts.shape[0]),
        "ingest_s": t_ingest, "setup_s": t_setup,
        "seconds_per_iteration": [float(x["seconds"]) for x in records],
        "loglik_per_frame": [float(x["loglik"]) for x in records],
        "beta": [float(x.get("beta_mean", float("nan"))) for x in records],
        "torch_threads": torch.get_num_threads(), "models_file": out if models is not None else None,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
