"""Benchmark: simulate 20,000 frames of 129 x 129 (target <= 120 s on 2 cores).

    python benchmarks/bench_simulate.py [--frames 20000] [--size 129] [--out bench_simulate.json]

Reports the wall time of each phase (3D volumes, slicing + Poisson) and the
peak resident memory.  Uses the default ``simulate`` parameters otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch

from spicompute.simulate import SimulationParams, build_detector, shape_volumes, simulate

TARGET_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_simulate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    p = SimulationParams.from_dict(dict(n_frames=args.frames, detector_size=args.size))

    t0 = time.perf_counter()
    shape_volumes(p, build_detector(p, np.random.default_rng(0)))
    t_volumes = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames, _ = simulate(p, progress=False)
    total = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {
        "frames": args.frames, "detector": f"{args.size}x{args.size}",
        "threads": args.threads, "seconds_total": round(total, 2),
        "seconds_volumes": round(t_volumes, 2),
        "frames_per_second": round(args.frames / total, 1),
        "mean_photons": float(frames.photons_per_frame().mean()),
        "peak_rss_gb": round(peak_gb, 2), "target_seconds": TARGET_S,
        "target_ratio": round(TARGET_S / total, 2), "machine": platform.processor() or platform.machine(),
    }
    print(f"simulate {args.frames} frames of {args.size}x{args.size}: {total:.1f} s "
          f"(volumes {t_volumes:.1f} s), {result['frames_per_second']} frames/s, "
          f"peak RSS {peak_gb:.2f} GB; target {TARGET_S:.0f} s -> {TARGET_S / total:.2f}x margin")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
