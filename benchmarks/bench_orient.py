"""Benchmark the orientation fit: M averages of L x L vs the n=20 zone (16,407 rotations).

Prints a table and writes JSON (--out).  Averages are noisy slices of a
42 nm cube on the default simulation geometry (6 keV, 705 mm, 0.4 mm
pixels).  Peak memory is the process's max RSS (resource.getrusage) and
the tracemalloc peak of numpy allocations during the fit.

    python benchmarks/bench_orient.py --averages 1000 --size 129 --out bench_orient.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc

import numpy as np
import torch

from spicompute.geometry import grid_q, wavenumber
from spicompute.io.averages import AverageSet
from spicompute.orient.fit import cube_reference, fit_orientations, refine_orientations
from spicompute.orient.quaternions import random_quaternions
from spicompute.orient.sampling import fundamental_orientations, misorientation_deg, sampling_step_deg
from spicompute.orient.slicing import model_coordinates
from spicompute.shapes import cube_intensity


def make_averages(m: int, size: int, seed: int = 0):
    lam = 1.2398419843320026 / 6.0
    dq = wavenumber(lam) * 0.4 / 705.0
    rng = np.random.default_rng(seed)
    truth = random_quaternions(m, rng)
    q = grid_q(size, dq, lam).reshape(-1, 3)
    img = np.empty((m, size, size), np.float32)
    for s in range(0, m, 100):
        sl = cube_intensity(model_coordinates(q, truth[s:s + 100]), 42.0).reshape(-1, size, size)
        img[s:s + 100] = rng.poisson(sl / sl.max(axis=(1, 2), keepdims=True) * 1e5)
    return AverageSet(img, np.ones_like(img), np.arange(m), np.zeros(m), np.arange(m),
                      np.ones(m), dq, lam), truth


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--averages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=129)
    ap.add_argument("--num-div", type=int, default=20)
    ap.add_argument("--r-min", type=float, default=4)
    ap.add_argument("--r-max", type=float, nargs="+", default=[40.0])
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--chunk", type=int, nargs="+", default=[512])
    ap.add_argument("--refine", action="store_true", help="also time the local refinement")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    avg, truth = make_averages(args.averages, args.size)
    t = time.perf_counter()
    quats, _ = fundamental_orientations(args.num_div)
    t_sampling = time.perf_counter() - t
    rows = []
    for r_max in args.r_max:
        for chunk in args.chunk:
            tracemalloc.start()
            t = time.perf_counter()
            res = fit_orientations(avg, cube_reference(42.0), quats, r_min=args.r_min, r_max=r_max,
                                   stride=args.stride, chunk=chunk)
            elapsed = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            err = misorientation_deg(res.quaternion, truth)
            row = {"averages": args.averages, "size": args.size, "orientations": len(quats),
                   "r_max": r_max, "chunk": chunk, "pixels": res.stats["n_pixels"],
                   "seconds": round(elapsed, 2), "numpy_peak_mb": round(peak / 2**20, 1),
                   "median_err_deg": round(float(np.median(err)), 2),
                   "frac_within_step": round(float(np.mean(err <= sampling_step_deg(args.num_div))), 3)}
            if args.refine:
                t = time.perf_counter()
                ref = refine_orientations(avg, cube_reference(42.0), res, quats, r_min=args.r_min,
                                          r_max=r_max, stride=args.stride,
                                          radius_deg=sampling_step_deg(args.num_div) / 2)
                row["refine_seconds"] = round(time.perf_counter() - t, 2)
                row["refined_median_err_deg"] = round(float(np.median(misorientation_deg(ref.quaternion, truth))), 2)
            rows.append(row)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"rows": rows, "sampling_seconds": round(t_sampling, 2), "max_rss_mb": round(maxrss_mb, 1),
           "threads": torch.get_num_threads()}
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    print(f"sampling {t_sampling:.2f} s, max RSS {maxrss_mb:.0f} MB, torch threads {torch.get_num_threads()}")
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
