"""Benchmark of the common-line CC matrix against its speed targets.

Measures
1. the machine's float32 matmul peak (plain numpy ``a @ b``, 2048^2);
2. ``M`` averages (default 1,000) of 129x129 at 180 lines: polar lines +
   normalisation time, then the CC matrix for each backend / block size:
   seconds, GFLOP/s (useful flops: the upper-triangular product), % of peak
   (speed against Dragonfly's ``calc_cc``: ``benchmarks/peers/bench_peers.py``,
   which runs both on the same models in the same run); also the bf16-screened
   backend (``--no-bf16`` skips it), checked against the float32 result of the same run
   (max |dCC|, share of pairs with the same best angles, share re-scored);
3. with ``--averages FILE [FILE ...]``: the ccmatrix stage itself (its q range,
   normalisation and usable averages, from ``--params``) on real class averages,
   float32 exhaustive against the bf16 screen: time and accuracy per file;
4. with ``--large M`` (e.g. 10000): the same in bounded memory, optionally
   only a fraction ``--large-fraction`` of the work (first block-row bands,
   which are the widest) with the total extrapolated by flop count; peak RSS.

Usage::

    python benchmarks/bench_ccmatrix.py --out bench_ccmatrix.json
    python benchmarks/bench_ccmatrix.py --large 10000 --large-fraction 0.05 --skip-main --out big.json
    python benchmarks/bench_ccmatrix.py --skip-main --averages data/averages.h5 --out real.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from spicompute.landscape import commonlines as cl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))



def peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best-of-``reps`` numpy float32 matmul rate, GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def synthetic_averages(m: int, size: int, seed: int = 0, chunk: int = 200):
    """(m, size, size) float32 smooth random speckle patterns with a beamstop."""
    rng = np.random.default_rng(seed)
    c = size // 2
    yy, xx = np.mgrid[:size, :size] - c
    r = np.hypot(yy, xx)
    envelope = (1.0 / (1 + (r / 6.0) ** 4)).astype(np.float32)
    out = np.empty((m, size, size), np.float32)
    for s in range(0, m, chunk):  # chunks of averages, bounded memory
        n = min(chunk, m - s)
        f = np.fft.fft2(rng.standard_normal((n, size, size)).astype(np.float32))
        k = np.fft.fftfreq(size)
        lowpass = (np.hypot(*np.meshgrid(k, k)) < 0.12).astype(np.float32)
        speck = np.abs(np.fft.ifft2(f * lowpass)) ** 2
        out[s:s + n] = speck * envelope
    valid = np.broadcast_to(r > 3, (m, size, size))
    return out, valid


def prepare_lines(m: int, size: int, n_lines: int):
    t = time.perf_counter()
    imgs, valid = synthetic_averages(m, size)
    t_make = time.perf_counter() - t
    t = time.perf_counter()
    r0, r1 = cl.auto_radius_range(valid[:8])
    radii = np.arange(r0, r1 + 1.0)
    raw, rv = cl.polar_lines(imgs, valid, radii, n_lines)
    lines = cl.normalise_lines(raw, rv, "radial")
    return lines, time.perf_counter() - t, t_make


def run_partial(lines: np.ndarray, block: int, fraction: float, backend: str = "torch"):
    """Compute the first block-row bands until ``fraction`` of the flops is done,
    the same way as :func:`cl.cc_matrix` on the CPU (threads over bands), writing
    into full-size (M, M) outputs so that memory is that of the full run."""
    import torch

    m, nl, nr = lines.shape
    res = cl.CCResult(np.zeros((m, m), np.float32), np.zeros((m, m), np.int16),
                      np.zeros((m, m), np.int16))
    total = cl.cc_flops(m, nl, nr)
    bands, done = [], 0.0
    for row0, row1 in cl._band_edges(m, block, 1):
        bands.append((row0, row1))
        done += 2.0 * nr * nl * nl * (row1 - row0) * (m - row0 - (row1 - row0 - 1) / 2)
        if done >= fraction * total:
            break
    t = time.perf_counter()
    cl._cc_matrix_threads(lines, res, bands, block, backend, torch.get_num_threads(), None)
    return time.perf_counter() - t, done / total


def stage_screen_case(path: str, params_path: str) -> dict:
    """The ccmatrix stage on one averages file, numpy (float32 exhaustive) vs bf16."""
    import yaml

    from spicompute.io.averages import read_averages
    from spicompute.landscape.ccmatrix import compute_ccmatrix
    from spicompute.stages.ccmatrix import DEFAULTS

    p = {**DEFAULTS, **(yaml.safe_load(Path(params_path).read_text()).get("ccmatrix") or {})}
    averages = read_averages(path)
    out = {}
    for backend in ("numpy", "bf16"):
        res, radii, _, info = compute_ccmatrix(averages, {**p, "backend": backend, "block": 0, "device": "cpu"})
        out[backend] = (res, info["seconds_cc"])
    (ref, t_ref), (res, t_bf16) = out["numpy"], out["bf16"]
    m, nl = averages.n_averages, p["n_angles"]
    flops = cl.cc_flops(m, nl, len(radii))
    row = {"case": f"{path} (M={m}, n_r={len(radii)})", "backend": "bf16",
           "block": cl.default_block(nl, "cpu", "bf16"), "seconds": t_bf16, "seconds_float32": t_ref,
           "gflops": flops / t_bf16 / 1e9, "percent_of_peak": float("nan"), "ms_per_pair": 1e3 * t_bf16 / (m * (m - 1) / 2),
           "rescored_fraction": res.rescored_fraction}
    row.update(accuracy_against(res, ref, nl))
    return row


def accuracy_against(res, ref, n_lines: int) -> dict:
    """How a result compares with the float32 exhaustive one, over the pairs i < j."""
    iu = np.triu_indices(len(ref.cc), 1)
    dcc = np.abs(res.cc[iu] - ref.cc[iu])

    def steps(x, y):
        d = np.abs(x.astype(int) - y.astype(int))
        return np.minimum(d, n_lines - d)

    same = (res.angle_a[iu] == ref.angle_a[iu]) & (res.angle_b[iu] == ref.angle_b[iu])
    near = (steps(res.angle_a[iu], ref.angle_a[iu]) <= 1) & (steps(res.angle_b[iu], ref.angle_b[iu]) <= 1)
    return {"max_abs_dcc": float(dcc.max()), "share_within_2e-3": float((dcc <= 2e-3).mean()),
            "share_same_angles": float(same.mean()), "share_angles_within_one_step": float(near.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=1000, help="averages in the main case")
    ap.add_argument("--size", type=int, default=129, help="average edge (pixels)")
    ap.add_argument("--n-lines", type=int, default=180, help="lines over pi")
    ap.add_argument("--blocks", default="8,16,24", help="block sizes to try (torch)")
    ap.add_argument("--torch", action="store_true", help="also time the torch backend")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="skip the bf16-screened backend (timed at its default block against numpy's result)")
    ap.add_argument("--averages", nargs="*", default=[],
                    help="averages files: the stage's float32 result against its bf16 screen")
    ap.add_argument("--params", default="params.yaml", help="params file for --averages (ccmatrix section)")
    ap.add_argument("--large-backend", default="numpy", choices=["numpy", "bf16"],
                    help="backend of the --large run")
    ap.add_argument("--skip-main", action="store_true")
    ap.add_argument("--large", type=int, default=0, help="also run this many averages")
    ap.add_argument("--large-fraction", type=float, default=1.0,
                    help="fraction of the large run's work to time (extrapolated)")
    ap.add_argument("--out", required=True, help="JSON output path")
    args = ap.parse_args(argv)

    import torch

    report = {"machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "cases": []}
    peak = peak_gflops(reps=10)
    report["numpy_sgemm_peak_gflops"] = peak
    print(f"numpy float32 matmul peak: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    rows = []
    if not args.skip_main:
        lines, t_prep, _ = prepare_lines(args.m, args.size, args.n_lines)
        m, nl, nr = lines.shape
        flops = cl.cc_flops(m, nl, nr)
        pairs = m * (m - 1) / 2
        report.update(m=m, n_lines=nl, n_r=nr, seconds_lines=t_prep, flops=flops)
        print(f"{m} averages {args.size}x{args.size}: {nl} lines x {nr} radii; "
              f"polar lines + normalisation {t_prep:.2f} s; {flops / 1e12:.2f} TFLOP")
        configs = [("numpy", int(b)) for b in args.blocks.split(",") if b]
        if args.torch:
            configs += [("torch", int(b)) for b in args.blocks.split(",") if b]
        if args.bf16:
            configs.append(("bf16", cl.default_block(nl, "cpu", "bf16")))
        reference = None
        for backend, block in configs:
            t = time.perf_counter()
            res = cl.cc_matrix(lines, block=block, backend=backend, device="cpu")
            sec = time.perf_counter() - t
            row = {"case": f"M={m}", "backend": backend, "block": block, "seconds": sec,
                   "gflops": flops / sec / 1e9, "percent_of_peak": 100 * flops / sec / 1e9 / peak,
                   "ms_per_pair": 1e3 * sec / pairs}
            if backend == "numpy" and reference is None:
                reference = res
            elif backend == "bf16" and reference is not None:
                row.update(accuracy_against(res, reference, nl))
                row["rescored_fraction"] = res.rescored_fraction
            rows.append(row)
        del lines
    for path in args.averages:
        rows.append(stage_screen_case(path, args.params))
    if args.large:
        lines, t_prep, _ = prepare_lines(args.large, args.size, args.n_lines)
        m, nl, nr = lines.shape
        block = int(args.blocks.split(",")[1 if "," in args.blocks else 0])
        if args.large_backend == "bf16":
            block = cl.default_block(nl, "cpu", "bf16")
        sec, frac = run_partial(lines, block, args.large_fraction, backend=args.large_backend)
        full = sec / frac
        flops = cl.cc_flops(m, nl, nr)
        pairs = m * (m - 1) / 2
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        rows.append({"case": f"M={m}", "backend": args.large_backend, "block": block,
                     "seconds": full, "measured_seconds": sec, "measured_fraction": frac,
                     "gflops": flops / full / 1e9,
                     "percent_of_peak": 100 * flops / full / 1e9 / peak,
                     "ms_per_pair": 1e3 * full / pairs,
                     "peak_rss_gib": peak_rss, "seconds_lines": t_prep,
                     "memory_model_gib": (4 * m * nl * nr + 8 * m * m
                                          + 4 * (block * nl) ** 2) / 1024 ** 3})
    # the machine may be shared: take the best of a second peak measurement too
    peak2 = peak_gflops(reps=10)
    if peak2 > peak:
        for r in rows:
            r["percent_of_peak"] *= peak / peak2
        peak = report["numpy_sgemm_peak_gflops"] = peak2
    print(f"numpy float32 matmul peak (best of two measurements): {peak:.1f} GFLOP/s")
    report["cases"] = rows
    print(f"{'case':>8} {'backend':>7} {'block':>5} {'seconds':>9} {'GFLOP/s':>8} "
          f"{'% peak':>7} {'ms/pair':>8}")
    for r in rows:
        note = (f"  (measured {r['measured_fraction']:.1%} in {r['measured_seconds']:.1f} s, "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB)" if "measured_fraction" in r else "")
        if "max_abs_dcc" in r:
            note += (f"  (vs float32: max |dCC| {r['max_abs_dcc']:.1e}, same angles "
                     f"{r['share_same_angles']:.5f}, re-scored {r['rescored_fraction']:.3f})")
        print(f"{r['case']:>8} {r['backend']:>7} {r['block']:>5} {r['seconds']:9.2f} "
              f"{r['gflops']:8.1f} {r['percent_of_peak']:7.1f} {r['ms_per_pair']:8.4f}{note}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
