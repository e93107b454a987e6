"""Million-frame streaming: peak memory of frames + one classify2d iteration vs the number of frames.

For each size N (default 250,000, 500,000 and 1,000,000 frames):

1. **generate** a photon-sparse frames file chunk by chunk
   (:func:`spicompute.io.stream.write_sparse_frames_stream`; the frames of
   ``bench_emc2d._generate``: photons drawn from rotated anisotropic patterns,
   ``--side``² pixels, ``--photons`` per frame), 20,000 frames at a time;
2. run the **frames** stage on it (``data.input`` = that file: validated and
   copied block by block above 200,000 frames);
3. run **classify2d** for ONE iteration (``--models`` K, ``--n-rot`` R, pixels
   cropped at ``--q-max-nm``, ``stream: true``); with ``--in-memory-too`` also
   with ``stream: false`` (all photons in memory) for comparison.

Each step runs in its own child process, which reports its own peak RSS
(``VmHWM``, see :func:`peak_rss_mb`) and wall time; the load
average is recorded with every result.  Peak RSS is then fitted as
``a + b N`` (least squares): ``b`` (bytes per frame) must stay at the size of
the per-frame quantities (ids, photons, scales, β, assignments, the frames
table), far below the photons' own size (``8 x photons`` bytes a frame for
one CSR copy, three copies in an in-memory EMC shard).

    .venv/bin/python benchmarks/bench_stream.py [--sizes 250000 500000 1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def peak_rss_mb() -> float:
    """This process's own peak resident set (MB): ``VmHWM`` of /proc/self/status.  ``ru_maxrss`` is
    not used: on Linux it keeps the high-water mark of the memory image replaced by ``exec``, i.e. a
    child started from a big parent reports at least the parent's size."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BLOCK = 20_000


def generate_file(path: Path, n_frames: int, side: int, photons: float, seed: int = 0) -> dict:
    """Write ``n_frames`` photon-sparse frames to ``path``, ``BLOCK`` frames at a time."""
    from bench_emc2d import _generate

    from spicompute.io.stream import write_sparse_frames_stream

    det = _generate(1, side, photons, seed=seed).detector
    n_blocks = -(-n_frames // BLOCK)

    def blocks():
        for b in range(n_blocks):
            n = min(BLOCK, n_frames - b * BLOCK)
            yield _generate(n, side, photons, seed=seed + 1 + b).counts

    nnz = write_sparse_frames_stream(path, blocks(), det, n_frames=n_frames, stage="bench_stream")
    return {"nnz": int(nnz), "file_mb": path.stat().st_size / 1e6}


def child(step: str, workdir: Path, n_frames: int, opts: dict) -> dict:
    """One step in this (child) process; returns its wall time and own peak RSS."""
    os.environ.setdefault("SPICOMPUTE_NO_PROGRESS", "1")
    t0 = time.perf_counter()
    info: dict = {}
    if step == "generate":
        info = generate_file(workdir / "input.h5", n_frames, opts["side"], opts["photons"])
    else:
        import yaml

        from spicompute.cli import main

        params = {"data": {"input": str(workdir / "input.h5"), "empty_frames": "drop"},
                  "classify2d": {"n_models": opts["models"], "n_rot": opts["n_rot"], "n_runs": 1,
                                 "subset_fraction": 1.0, "max_iter": 1, "min_iter": 1, "device": "cpu",
                                 "q_max_nm": opts["q_max_nm"],
                                 "stream": False if step == "classify2d_in_memory" else opts["stream"],
                                 "block_frames": 4096}}
        (workdir / "params.yaml").write_text(yaml.safe_dump(params))
        w = str(workdir)
        if step == "frames":
            args = ["frames", "--params", f"{w}/params.yaml", "-q", "--out", f"{w}/frames.h5",
                    "--truth", f"{w}/truth.h5"]
        else:
            args = ["classify2d", "--params", f"{w}/params.yaml", "-q", "--frames", f"{w}/frames.h5",
                    "--out", f"{w}/averages.h5", "--frames-table", f"{w}/frames.parquet",
                    "--part", f"{w}/part.parquet", "--checkpoints", "", "--metrics", f"{w}/m.json",
                    "--live", ""]
        rc = main(args)
        if rc:
            raise SystemExit(f"{step} failed with exit status {rc}")
        if step.startswith("classify2d"):
            m = json.loads((workdir / "m.json").read_text())
            info = {"streamed": m.get("streamed"), "n_pixels_used": m["n_pixels_used"],
                    "seconds_per_iteration": m["runs"][0]["seconds_per_iteration"]}
    return {"step": step, "n_frames": n_frames, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
            "loadavg_1min": os.getloadavg()[0], **info}


def run_child(step: str, workdir: Path, n_frames: int, opts: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--workdir", str(workdir), "--n", str(n_frames),
           "--opts", json.dumps(opts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPICOMPUTE_NO_PROGRESS": "1", "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{step} at N={n_frames} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def linear_fit(n: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = a + b n``; returns (a, b)."""
    b, a = np.polyfit(np.asarray(n, float), np.asarray(y, float), 1)
    return float(a), float(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 500_000, 1_000_000])
    ap.add_argument("--side", type=int, default=64, help="detector side (pixels)")
    ap.add_argument("--photons", type=float, default=60.0, help="mean photons per frame")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--n-rot", type=int, default=8)
    ap.add_argument("--q-max-nm", type=float, default=0.25, help="classify2d pixel crop (rad/nm)")
    ap.add_argument("--stream", default="true", choices=["true", "false", "auto"])
    ap.add_argument("--in-memory-too", action="store_true",
                    help="also run classify2d with stream: false (the photons in memory) for comparison")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream.json"))
    ap.add_argument("--child", default="")
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--opts", default="{}")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, Path(args.workdir), args.n, json.loads(args.opts))))
        return 0
    opts = {"side": args.side, "photons": args.photons, "models": args.models, "n_rot": args.n_rot,
            "q_max_nm": args.q_max_nm, "stream": {"true": True, "false": False}.get(args.stream, "auto")}
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        for n in args.sizes:
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            for step in ("generate", "frames", "classify2d") + (("classify2d_in_memory",) if args.in_memory_too else ()):
                r = run_child(step, work, n, opts)
                rows.append(r)
                print(f"N={n:>9,}  {step:<10} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                      f"load {r['loadavg_1min']:.2f}", flush=True)
            for f in work.iterdir():
                f.unlink() if f.is_file() else None
    sizes = np.asarray(args.sizes, float)
    gen = [r for r in rows if r["step"] == "generate"]
    photons_per_frame = float(np.mean([r["nnz"] / r["n_frames"] for r in gen]))
    fits = {}
    for step in sorted({r["step"] for r in rows}, key=["generate", "frames", "classify2d",
                                                       "classify2d_in_memory"].index):
        rss = [r["peak_rss_mb"] for r in rows if r["step"] == step]
        sec = [r["seconds"] for r in rows if r["step"] == step]
        a, b = linear_fit(sizes, np.asarray(rss) * 1e6)
        fits[step] = {"rss_intercept_mb": a / 1e6, "rss_bytes_per_frame": b,
                      "seconds_per_million_frames": linear_fit(sizes, sec)[1] * 1e6}
    result = {"benchmark": "stream", "sizes": args.sizes, "options": opts,
              "stored_nonzeros_per_frame": photons_per_frame,
              "csr_bytes_per_frame": 8 * photons_per_frame, "results": rows, "fits": fits,
              "loadavg_end": os.getloadavg(), "cpu_count": os.cpu_count()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{photons_per_frame:.1f} non-zeros per frame = {8 * photons_per_frame:.0f} bytes/frame as one CSR copy")
    print("| step | peak RSS intercept (MB) | RSS growth (bytes/frame) | s per 10^6 frames |")
    print("|---|---|---|---|")
    for step, f in fits.items():
        print(f"| {step} | {f['rss_intercept_mb']:.0f} | {f['rss_bytes_per_frame']:.0f} | "
              f"{f['seconds_per_million_frames']:.0f} |")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
