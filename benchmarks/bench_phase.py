"""Benchmark 3D phase retrieval: seconds per volume at several grid sizes.

The volume is the closed-form intensity of a cube whose edge spans ~1/3 of
the field of view (oversampling ~3 per axis, as the VAE volumes of a 42 nm
cube), with a beamstop of radius 2 dq and nothing observed beyond q_max.
Default phasing settings (params.yaml ``phase``) unless overridden.  Prints a
table and writes JSON (--out): seconds, final error, particle volume / true
volume (the invariant estimate, and the paper's 1e-4-of-mass voxel count),
PRTF resolution, peak RSS.

    python benchmarks/bench_phase.py --sizes 31 41 81 --out bench_phase.json [--backends numpy torch]

``--backends numpy torch`` times both FFT backends on the same volume in the
same run (torch on ``--device``, default cpu; ``cuda`` on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from spicompute.phasing import PhasingSettings, invariant_volume, particle_volume, phase_retrieval
from spicompute.shapes import cube_intensity


def cube_volume(size: int, edge_nm: float = 42.0):
    """(intensity, observed, dq_nm, dx_nm) with the edge an odd number of voxels, ~size/3."""
    vox = max(3, int(size / 3) | 1)
    dx = edge_nm / vox
    dq = 2 * np.pi / (size * dx)
    axis = (np.arange(size) - size // 2) * dq
    q = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)
    qn = np.linalg.norm(q, axis=-1)
    observed = (qn > 2 * dq) & (qn <= (size // 2) * dq)
    return cube_intensity(q, edge_nm).astype(np.float64), observed, dq, dx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[31, 41, 81])
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--n-dm", type=int, default=150)
    ap.add_argument("--n-er", type=int, default=50)
    ap.add_argument("--threads", type=int, default=-1)
    ap.add_argument("--backends", nargs="+", default=["numpy"], choices=["numpy", "torch"])
    ap.add_argument("--device", default="cpu", help="torch device for --backends torch")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = []
    print(f"{'L':>5} {'backend':>8} {'s/volume':>9} {'error':>7} {'V/V_true':>8} {'thr/V':>7} {'res_nm':>7} "
          f"{'rss_MiB':>8}")
    for size, backend in ((s, b) for s in args.sizes for b in args.backends):
        inten, obs, dq, dx = cube_volume(size)
        settings = PhasingSettings(n_starts=args.n_starts, n_dm=args.n_dm, n_er=args.n_er,
                                   workers=args.threads, backend=backend,
                                   device=args.device if backend == "torch" else "cpu")
        t = time.perf_counter()
        r = phase_retrieval(inten, obs, dq, settings)
        sec = time.perf_counter() - t
        ratio = invariant_volume(r.density, inten, obs, dq)[0] / 42.0**3
        ratio_thr = particle_volume(r.density, dx) / 42.0**3
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append({"size": size, "backend": backend, "device": settings.device, "seconds": round(sec, 2), "final_error": r.final_error,
                     "volume_ratio": ratio, "volume_ratio_threshold": ratio_thr,
                     "prtf_resolution_nm": r.resolution_nm, "peak_rss_mib": round(rss), "n_starts": args.n_starts,
                     "n_dm": args.n_dm, "n_er": args.n_er})
        print(f"{size:>5} {backend:>8} {sec:>9.2f} {r.final_error:>7.4f} {ratio:>8.3f} {ratio_thr:>7.3f} "
              f"{r.resolution_nm:>7.2f} {rss:>8.0f}", flush=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
