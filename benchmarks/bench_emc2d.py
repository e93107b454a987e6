"""Benchmark of 2D EMC iterations against the speed target.

Workload: 30,000 frames of 150 x 150 pixels, ~900 photons/frame, 50 models x
36 rotations, 2 threads (the size of the Dragonfly comparison; the ratio to
Dragonfly itself comes only from ``benchmarks/peers/bench_peers.py``, which
runs both tools on the same file in the same run).  Target: <= 4 GB peak memory.

By default a data set of those sizes is generated (photons drawn from a few
smooth anisotropic patterns at random in-plane rotations and fluences); with
``--photons FILE --detector FILE [--wavelength-nm L]`` a Dragonfly photon +
detector file is used instead, so the comparison runs on identical data.

    .venv/bin/python benchmarks/bench_emc2d.py --iterations 3 --out bench_emc2d.json

Over a whole run (``--iterations 10``) the per-iteration times, beta, the
share of (frame, rotation, model) posteriors kept above ``--prob-min`` and
the expected log-likelihood per frame are reported; ``--prob-min 0`` gives
the dense run to compare with (same data, same seed).

E-step pruning (``--prune-mass``, default the stage's 1e-6): each iteration's
``e_step_share`` (share of (frame, model) likelihoods computed) is reported;
``--prune-compare`` runs the same iterations a second time with pruning off and
reports, per iteration, pruned / unpruned seconds (issue 20's target: <= 0.3 for a
late pruned iteration):

    .venv/bin/python benchmarks/bench_emc2d.py --frames 10000 --iterations 10 --prune-compare
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))



def generate(n_frames: int, side: int, photons: float, n_patterns: int = 5, seed: int = 0):
    """Frames of :func:`_generate` with ``photons`` mean photons on good pixels
    (a 3,000-frame pilot measures the share lost on the panel gaps first)."""
    pilot = _generate(3000, side, photons, n_patterns, seed + 1)
    kept = pilot.photons_per_frame().mean() / photons
    return _generate(n_frames, side, photons / max(kept, 1e-3), n_patterns, seed)


def _generate(n_frames: int, side: int, photons: float, n_patterns: int = 5, seed: int = 0):
    """Photon-sparse frames: photon positions drawn from rotated smooth patterns.

    Each frame: a pattern t, angle a, fluence f in [0.5, 1.5]; Poisson(photons*f)
    photons placed by sampling the pattern's pixel distribution (a disc inside
    the detector), then turned by a and snapped to the nearest pixel; photons
    on the panel gaps are lost as on a real detector.  Vectorised over all
    photons, in chunks of frames.
    """
    from spicompute.geometry import regular_detector, standard_mask
    from spicompute.io.frames import FrameSet

    rng = np.random.default_rng(seed)
    c = (side - 1) / 2
    mask = standard_mask((side, side), (c, c), beamstop_radius_px=3, gap_width_px=2)
    det = regular_detector((side, side), wavelength_nm=0.2, distance_mm=700.0,
                           pixel_size_mm=0.4, mask=mask)
    yy, xx = np.mgrid[0:side, 0:side] - c
    r = np.hypot(xx, yy) + 1.0
    phi = np.arctan2(yy, xx)
    cdfs = []
    for t in range(n_patterns):
        aniso = 1 + 0.8 * np.cos(2 * (t + 1) * phi + t) * np.exp(-r / (15 + 5 * t))
        pat = (r ** -2.0) * aniso * (1 + 0.5 * np.cos(r / (3 + t)) ** 2)
        pat[(r - 1.0 < 4) | (r - 1.0 > c)] = 0   # no photons in the beamstop or off the disc
        cdf = np.cumsum(pat.ravel())
        cdfs.append(cdf / cdf[-1])
    label = rng.integers(0, n_patterns, n_frames)
    angle = rng.uniform(0, 2 * np.pi, n_frames)
    n_ph = rng.poisson(photons * rng.uniform(0.5, 1.5, n_frames))
    chunks = []
    for lo in range(0, n_frames, 2000):          # bounded memory: 2,000 frames at a time
        hi = min(n_frames, lo + 2000)
        row = np.repeat(np.arange(lo, hi), n_ph[lo:hi])
        u = rng.random(row.size)
        pix = np.empty(row.size, np.int64)
        lab = label[row]
        for t in range(n_patterns):
            sel = lab == t
            pix[sel] = np.searchsorted(cdfs[t], u[sel])
        px, py = xx.ravel()[pix], yy.ravel()[pix]
        ca, sa = np.cos(angle[row]), np.sin(angle[row])
        jx = np.rint(ca * px - sa * py + c).astype(np.int64)
        iy = np.rint(sa * px + ca * py + c).astype(np.int64)
        keep = (jx >= 0) & (jx < side) & (iy >= 0) & (iy < side)
        chunks.append(sp.csr_matrix((np.ones(keep.sum(), np.int32),
                                     (row[keep] - lo, iy[keep] * side + jx[keep])),
                                    shape=(hi - lo, side * side)))
    counts = sp.vstack(chunks, format="csr")
    counts.sum_duplicates()
    counts = sp.csr_matrix(counts @ sp.diags(mask.ravel().astype(np.int32), dtype=np.int32))
    counts.eliminate_zeros()
    return FrameSet(counts, np.arange(n_frames), det)


#: an iteration counts as "late pruned" when it computed fewer than this share of the pairs
LATE_SHARE = 0.1


def pruning_table(pruned: list[dict], unpruned: list[dict]) -> dict:
    """Per iteration: pruned and unpruned seconds, their ratio and the pruned run's E-step share;
    the median ratio over the late pruned iterations (share < :data:`LATE_SHARE`)."""
    rows = [{"iteration": i + 1, "pruned_s": a["seconds"], "unpruned_s": b["seconds"],
             "ratio": a["seconds"] / b["seconds"], "e_step_share": a.get("e_step_share", 1.0)}
            for i, (a, b) in enumerate(zip(pruned, unpruned))]
    late = [r["ratio"] for r in rows if r["e_step_share"] < LATE_SHARE]
    return {"iterations": rows, "late_ratio_median": float(np.median(late)) if late else float("nan"),
            "late_iterations": len(late),
            "total_ratio": sum(r["pruned_s"] for r in rows) / sum(r["unpruned_s"] for r in rows)}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads), s: unlike wall time it does
    not grow when other processes share the cores."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photons", help="Dragonfly photon file (.emc HDF5)")
    ap.add_argument("--detector", help="Dragonfly detector file (with --photons)")
    ap.add_argument("--wavelength-nm", type=float, default=0.62,
                    help="wavelength for the Dragonfly detector's q scale (default 0.62)")
    ap.add_argument("--frames", type=int, default=30000)
    ap.add_argument("--side", type=int, default=150)
    ap.add_argument("--photons-per-frame", type=float, default=900.0)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--rotations", type=int, default=36)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--prob-min", type=float, default=1e-6,
                    help="posterior sparsity threshold (classify2d.prob_min; 0: dense)")
    ap.add_argument("--block-frames", type=int, default=4096)
    ap.add_argument("--prune-mass", type=float, default=1e-6, help="classify2d.prune_mass (0: off)")
    ap.add_argument("--prune-compare", action="store_true",
                    help="run again with pruning off; report pruned / unpruned seconds per iteration")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--out", default="bench_emc2d.json", help="JSON results file")
    args = ap.parse_args(argv)

    import torch

    from spicompute.emc2d.run import EMCConfig, initial_models, run_emc, usable_counts
    from spicompute.emc2d.steps import build_rotation_grid
    from spicompute.execution import tune_malloc

    tune_malloc()   # as the spicompute CLI does before every stage
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.photons:
        if not args.detector:
            ap.error("--photons needs --detector")
        from spicompute.io.dragonfly import read_dragonfly_photons

        frames = read_dragonfly_photons(args.photons, args.detector, args.wavelength_nm)
        source = f"dragonfly:{args.photons}"
    else:
        frames = generate(args.frames, args.side, args.photons_per_frame)
        source = "generated"
    t_load = time.perf_counter() - t0
    cfg = EMCConfig(n_models=args.models, n_rot=args.rotations, n_runs=1, subset_fraction=1.0,
                    max_iter=args.iterations, min_iter=args.iterations, tol=0.0,
                    block_frames=args.block_frames, device="cpu", prob_min=args.prob_min,
                    prune_mass=args.prune_mass)
    t0 = time.perf_counter()
    grid = build_rotation_grid(frames.detector, cfg.n_rot)
    counts, photons = usable_counts(frames, grid)
    keep = photons > 0
    counts, photons = counts[keep], photons[keep]
    init = initial_models(grid, counts, photons, cfg.n_models, np.random.default_rng(0))
    t_setup = time.perf_counter() - t0
    records, cpu = [], [_cpu_seconds()]

    def on_iteration(rec):
        records.append(rec)
        cpu.append(_cpu_seconds())

    state = run_emc(counts, grid, cfg, init, on_iteration=on_iteration)
    per_iter = [r["seconds"] for r in records]
    compare = None
    if args.prune_compare:
        import dataclasses

        unpruned = []
        run_emc(counts, grid, dataclasses.replace(cfg, prune_mass=0.0), init, on_iteration=unpruned.append)
        compare = pruning_table(records, unpruned)
    cpu_per_iter = np.diff(cpu).tolist()
    steady = float(np.median(per_iter))
    n_photons = float(counts.sum())
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {
        "source": source, "frames": int(counts.shape[0]), "pixels_used": grid.n_pix,
        "detector_pixels": frames.n_pixels, "grid_size": grid.size,
        "photons_per_frame": n_photons / counts.shape[0],
        "nnz_per_frame": counts.nnz / counts.shape[0],
        "models": cfg.n_models, "rotations": cfg.n_rot, "iterations": len(per_iter),
        "seconds_per_iteration": per_iter, "median_seconds_per_iteration": steady,
        "photon_orientations_per_s": n_photons * cfg.n_rot * cfg.n_models / steady,
        "gflops_e_and_m": 2 * 2 * counts.nnz * cfg.n_rot * cfg.n_models / steady / 1e9,
        "cpu_seconds_per_iteration": cpu_per_iter,
        "median_cpu_seconds_per_iteration": float(np.median(cpu_per_iter)),
        "peak_rss_gb": rss_gb, "load_seconds": t_load, "setup_seconds": t_setup,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "final_mutual_info": records[-1]["mutual_info"],
        "prob_min": cfg.prob_min,
        "beta_per_iteration": [r["beta_mean"] for r in records],
        "loglik_per_frame": [r["loglik"] / counts.shape[0] for r in records],
        "total_seconds": float(np.sum(per_iter)),
        "seconds_iterations_1_2": float(np.sum(per_iter[:2])),
        "seconds_iterations_6_10": float(np.sum(per_iter[5:10])),
        "prune_mass": cfg.prune_mass,
        "e_step_share": [r.get("e_step_share", 1.0) for r in records],
        "pruning": compare,
    }
    print(f"{'quantity':32s} value")
    for key in ("source", "frames", "pixels_used", "photons_per_frame", "models", "rotations",
                "median_seconds_per_iteration", "median_cpu_seconds_per_iteration",
                "photon_orientations_per_s", "gflops_e_and_m",
                "peak_rss_gb", "torch_threads", "load_average"):
        val = result[key]
        print(f"{key:32s} {val:.4g}" if isinstance(val, float) else f"{key:32s} {val}")
    print("seconds per iteration:", " ".join(f"{s:.2f}" for s in per_iter))
    print("loglik per frame:", " ".join(f"{v:.2f}" for v in result["loglik_per_frame"]))
    print("E-step share:", " ".join(f"{v:.3f}" for v in result["e_step_share"]))
    if compare:
        print("pruned / unpruned seconds:", " ".join(f"{r['ratio']:.2f}" for r in compare["iterations"]),
              f"| late pruned iterations (share < {LATE_SHARE}): median {compare['late_ratio_median']:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    del state
    return 0


if __name__ == "__main__":
    sys.exit(main())
