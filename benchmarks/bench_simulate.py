"""Benchmark: simulate 20,000 frames of 129 x 129 (target <= 120 s on 2 cores).

    python benchmarks/bench_simulate.py [--frames 20000] [--size 129] [--binning 2]
        [--background 50] [--threads 2] [--out bench_simulate.json]

Reports the wall time of the whole simulation and of its set-up phase (shape
library: melt amplitude quadratures + truth intensity volumes), the
throughput, the CPU time, the peak resident memory and the 1-minute load
average at start and end (the machine is shared: compare runs made side by
side).  Uses the default ``simulate`` parameters otherwise; ``--background``
defaults to the params.yaml default of 50 photons per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch

from spicompute.simulation.simulate import SimulationParams, build_detector, simulate

TARGET_S = 120.0


def _setup_seconds(p: SimulationParams) -> float:
    """Wall time of the shape library and truth volumes alone (what precedes the frames)."""
    import spicompute.simulation.simulate as sim

    t0 = time.perf_counter()
    det = build_detector(p, np.random.default_rng(0))
    if hasattr(sim, "make_library"):  # direct evaluation (this version)
        library, _, _ = sim.make_library(p, det)
        sim.shape_volumes(p, det, library)
    else:  # intensity-volume slicing (earlier versions)
        sim.shape_volumes(p, det)
    return time.perf_counter() - t0


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads), s: less sensitive than
    wall time to other jobs on a shared machine."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=129)
    parser.add_argument("--binning", type=int, default=2)
    parser.add_argument("--background", type=float, default=50.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_simulate.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw = dict(n_frames=args.frames, detector_size=args.size, binning=args.binning)
    if args.background > 0:
        raw["background_photons"] = args.background
    p = SimulationParams.from_dict(raw)
    load_start = os.getloadavg()[0]
    t_setup = _setup_seconds(p)

    t0, c0 = time.perf_counter(), _cpu_seconds()
    frames, _ = simulate(p, progress=False)
    total, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {
        "frames": args.frames, "detector": f"{args.size}x{args.size}", "binning": args.binning,
        "background_photons": args.background,
        "threads": args.threads, "seconds_total": round(total, 2),
        "seconds_setup": round(t_setup, 2), "cpu_seconds": round(cpu, 2),
        "frames_per_second": round(args.frames / total, 1),
        "mean_photons": float(frames.photons_per_frame().mean()),
        "peak_rss_gb": round(peak_gb, 2), "target_seconds": TARGET_S,
        "target_ratio": round(TARGET_S / total, 2),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }
    print(f"simulate {args.frames} frames of {args.size}x{args.size}: {total:.1f} s "
          f"(set-up {t_setup:.1f} s, CPU {cpu:.1f} s), {result['frames_per_second']} frames/s, "
          f"peak RSS {peak_gb:.2f} GB, load {load_start:.1f}->{result['load_average_end']:.1f}; "
          f"target {TARGET_S:.0f} s -> {TARGET_S / total:.2f}x margin")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
