"""Time spicompute's common-line CC matrix on the ``intens`` stack of a Dragonfly output
file (run by bench_peers.py in the project's Python, PYTHONPATH = the checkout timed).

    python _ours_cc.py DRAGONFLY_OUTPUT.h5 N_LINES R_MIN THREADS

Prints one JSON object: seconds (polar lines + normalisation, CC matrix), sizes.
Radii R_MIN+1 .. edge in grid steps, as Dragonfly's calc_cc samples them.
"""
from __future__ import annotations

import json
import sys
import time

import h5py
import numpy as np


def main(argv) -> int:
    path, n_lines, r_min, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    import torch

    torch.set_num_threads(threads)
    from spicompute.execution import tune_malloc
    from spicompute.landscape import commonlines as cl

    tune_malloc()   # as the spicompute CLI does before every stage

    with h5py.File(path, "r") as h5:
        intens = np.asarray(h5["intens"][()], np.float32)
    valid = intens >= 0                    # Dragonfly marks unsampled voxels negative
    size = intens.shape[-1]
    radii = np.arange(r_min + 1, size // 2, dtype=float)
    t0 = time.perf_counter()
    raw, rv = cl.polar_lines(intens, valid, radii, n_lines)
    lines = cl.normalise_lines(raw, rv, "radial")
    t_lines = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = cl.cc_matrix(lines, backend="numpy", device="cpu")
    t_cc = time.perf_counter() - t0
    cc = np.asarray(res.cc if hasattr(res, "cc") else res[0])
    print(json.dumps({"averages": int(intens.shape[0]), "size": size, "n_lines": n_lines,
                      "n_radii": int(radii.size), "seconds_lines": t_lines, "seconds_cc": t_cc,
                      "seconds_total": t_lines + t_cc,
                      "median_offdiag_cc": float(np.median(cc[~np.eye(cc.shape[0], dtype=bool)]))}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
