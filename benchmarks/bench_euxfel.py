"""Benchmark: EuXFEL AGIPD 1M photon conversion + hit finding, frames/s on 2 cores.

    python benchmarks/bench_euxfel.py [--trains 12] [--sequences 2] [--pulses 32]
        [--trains-per-chunk 4] [--scheduler local:2] [--out bench_euxfel.json]

Builds an extra-data mock proc run (``--sequences`` sequence files x ``--trains`` trains x
``--pulses`` pulses x 16 modules, every frame written: Poisson background of 1e-3
photons/pixel ~ 1,000 lit pixels, 7 % cube hits of ~3,000 photons, keV with 0.05-photon
Gaussian noise), then times :func:`spicompute.ingest.euxfel.ingest_run` — the frames
stage's EuXFEL path: read by module and train chunk, photon conversion, masks, lit-pixel
counts, hits written photon-sparse — in-process and with ``--scheduler`` (whose cluster
start-up and shutdown, timed alone, is included in each Dask run).  Reported:
frames/s of the streaming pass with a given lit-pixel threshold (one pass) and of the
``auto`` threshold run (a lit-count pass over the sampled trains + the streaming pass), the
1-minute load average before and after (the machine is shared), peak RSS.  The mock files
were just written, so reads come from the page cache: this measures compute, not GPFS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trains", type=int, default=12, help="trains per sequence file")
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--pulses", type=int, default=32)
    parser.add_argument("--trains-per-chunk", type=int, default=4,
                        help="data.trains_per_chunk (4 x 32 mock pulses ~ a third of a 352-pulse train)")
    parser.add_argument("--scheduler", default="local:2")
    parser.add_argument("--out", default="bench_euxfel.json")
    args = parser.parse_args()

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from spicompute.execution import dask_client
    from spicompute.ingest.euxfel import ingest_run
    from spicompute.io.euxfel import agipd_q, load_agipd_geometry
    from tests.ingest.euxfel_mock import inject, make_proc_run

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        make_proc_run(run, n_seq=args.sequences, trains_per_seq=args.trains, pulses=args.pulses)
        n = args.sequences * args.trains * args.pulses
        rng = np.random.default_rng(0)
        hits = np.flatnonzero(rng.random(n) < 0.07)
        q = agipd_q(load_agipd_geometry(None), 705.0, 6.0)
        t0 = time.perf_counter()
        inject(run, np.arange(n), q, hits=hits, bg=1e-3, hit_photons=3000, seed=1, keep_truth=False)
        t_make = time.perf_counter() - t0
        base = dict(input=str(run), distance_mm=705.0, photon_energy_kev=6.0,
                    trains_per_chunk=args.trains_per_chunk)
        results = {}
        t0 = time.perf_counter()
        with dask_client(args.scheduler, "data.scheduler"):  # start-up + shutdown alone, part of each Dask run below
            pass
        cluster_s = time.perf_counter() - t0
        for label, extra in (("in_process_given", dict(hit_threshold=1300)),
                             ("in_process_auto", {}),
                             (f"{args.scheduler}_given", dict(hit_threshold=1300, scheduler=args.scheduler)),
                             (f"{args.scheduler}_auto", dict(scheduler=args.scheduler))):
            t0 = time.perf_counter()
            m = ingest_run({**base, **extra}, Path(tmp) / f"{label}.h5", Path(tmp) / f"{label}.parquet")
            dt = time.perf_counter() - t0
            results[label] = {"seconds": round(dt, 2), "frames_per_s": round(n / dt, 1),
                              "hits": m["hits"], "threshold": m["hit_threshold"]}
            print(f"{label:24s} {dt:7.2f} s  {n / dt:8.1f} frames/s  hits {m['hits']} "
                  f"(injected {len(hits)}), threshold {m['hit_threshold']:.0f}", flush=True)
    report = {
        "benchmark": "euxfel_ingest",
        "frames": n, "modules": 16, "pixels_per_frame": 16 * 512 * 128,
        "injected_hits": int(len(hits)), "mock_build_s": round(t_make, 1),
        "trains_per_chunk": args.trains_per_chunk, "pulses_per_train": args.pulses,
        "results": results,
        "dask_cluster_start_stop_s": round(cluster_s, 2),
        "load_avg_1min_start": round(load_start, 2), "load_avg_1min_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "python": platform.python_version(),
    }
    print(json.dumps(report, indent=2))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
