"""Scaling model of the heavy stages: time and peak memory at three sizes, fitted exponents, projections.

Measured (each point in its own child process: wall time of the computation and the child's own peak
RSS, ``VmHWM`` (:func:`peak_rss_mb`); the 1-minute load average with every point):

* **classify2d** -- seconds per EMC iteration vs the number of frames N (one run, K models x R
  rotations, q-cropped pixels; frames of ``bench_emc2d._generate``), in-process; and at the largest N
  on a Dask ``local:1`` and ``local:2`` cluster (parallel efficiency of 2 workers);
* **ccmatrix** -- the CC matrix vs the number of averages M (180 lines x n_r radii), in-process, and
  ``local:1`` / ``local:2`` at the largest M;
* **orient** -- the orientation scan vs M (cube slices at random orientations, 65 x 65 grid,
  ``--num-div`` orientations), in-process, and ``local:1`` / ``local:2`` at the largest M;
* **vae** -- seconds per training batch (``bench_vae.measure``: forward, Ewald slicing, backward,
  Adam) at the three volume presets 27^3, 81^3, 161^3; an epoch is ``ceil(M / batch)`` such steps,
  so epoch time is linear in M by construction.

Fits: ``log t = log c + alpha log size`` (least squares over the three sizes; same for memory).
Projections for the paper's case (2.45 M frames; 1,000 and 10,000 averages; 161^3 VAE) are written
as a markdown table for (a) this machine (from the fits), (b) one GPU (only from measured GPU
numbers: none here, so "not measured"), (c) N cluster nodes (from the measured 2-worker Dask
efficiency; assumptions stated in the table's notes).

    .venv/bin/python benchmarks/bench_scaling.py [--quick] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_stream import peak_rss_mb  # noqa: E402  (VmHWM of this process)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


PAPER_FRAMES = 2_450_000
PAPER_AVERAGES = (1000, 10000)
PAPER_ORIENTATIONS = 16407          # num_div 20 in the cube's fundamental zone
PAPER_K, PAPER_R, PAPER_RUNS, PAPER_SUBSET, PAPER_ITER = 200, 36, 5, 0.8, 20
NODES = (4, 16, 64)


# ----------------------------------------------------------------------------- measurements (children)
def m_classify2d(n: int, o: dict) -> dict:
    from bench_emc2d import _generate

    from spicompute.emc2d.run import EMCConfig, run_bootstrap
    from spicompute.execution import dask_client

    frames = _generate(n, o["side"], o["photons"], seed=3)
    # the client comes from the scheduler option, cfg.scheduler stays "": workers keep Dask's 1 thread,
    # so local:1 vs local:2 compares 1 and 2 single-threaded workers
    cfg = EMCConfig(n_models=o["K"], n_rot=o["R"], n_runs=1, subset_fraction=1.0, max_iter=2, min_iter=2,
                    device="cpu", q_max_nm=o["q_max_nm"])
    with dask_client(o.get("scheduler", "")) as client:
        t0 = time.perf_counter()
        res = run_bootstrap(frames, cfg, client=client)
        total = time.perf_counter() - t0
    sec = [h["seconds"] for h in res.histories[0]]
    return {"seconds": float(np.mean(sec)), "seconds_total": total, "n_pixels": res.grid.n_pix,
            "photons_per_frame": float(frames.counts.nnz / n)}


def m_ccmatrix(m: int, o: dict) -> dict:
    from spicompute.landscape.commonlines import cc_matrix, resolve_device

    resolve_device("auto")  # imports torch before the clock starts
    rng = np.random.default_rng(0)
    lines = rng.standard_normal((m, o["n_lines"], o["n_r"])).astype(np.float32)
    lines -= lines.mean(axis=2, keepdims=True)
    lines /= np.linalg.norm(lines, axis=2, keepdims=True)
    t0 = time.perf_counter()
    cc_matrix(lines, scheduler=o.get("scheduler", ""), band_blocks=4, workers=1)
    return {"seconds": time.perf_counter() - t0}


def m_orient(m: int, o: dict) -> dict:
    from spicompute.execution import dask_client
    from spicompute.geometry import grid_q
    from spicompute.io.averages import AverageSet
    from spicompute.orient.fit import cube_reference, fit_orientations
    from spicompute.orient.quaternions import random_quaternions
    from spicompute.orient.sampling import fundamental_orientations
    from spicompute.orient.slicing import model_coordinates
    from spicompute.shapes import cube_intensity

    size, dq, lam = 65, 0.0345, 0.2066
    rng = np.random.default_rng(1)
    q = grid_q(size, dq, lam).reshape(-1, 3)
    img = cube_intensity(model_coordinates(q, random_quaternions(m, rng)), 42.0).reshape(-1, size, size)
    img = rng.poisson(img * (1e5 / img.max(axis=(1, 2), keepdims=True))).astype(np.float32)
    avg = AverageSet(img, np.ones_like(img), np.arange(m), np.zeros(m), np.arange(m), np.full(m, 50.0), dq, lam)
    quats, weights = fundamental_orientations(o["num_div"])
    sched = o.get("scheduler", "")
    with dask_client(sched) as client:
        t0 = time.perf_counter()
        fit_orientations(avg, cube_reference(42.0), quats, r_min=3, r_max=28, weights=weights,
                         average_chunk=o["average_chunk"], client=client, worker_threads=1)
        sec = time.perf_counter() - t0
    return {"seconds": sec, "n_orientations": int(len(quats))}


def m_vae(preset: str, o: dict) -> dict:
    from bench_vae import measure

    row = measure(preset, "cpu", o["vae_batch"], o["vae_batches"], False, 0)
    return {"seconds": row["seconds_per_batch"], "volume": row["volume"], "batch": row["batch"]}


MEASURE = {"classify2d": m_classify2d, "ccmatrix": m_ccmatrix, "orient": m_orient, "vae": m_vae}


def child(stage: str, size, opts: dict) -> dict:
    """One measurement.  In-process runs use ONE thread (torch and BLAS): the per-core rate, which a
    shared, loaded machine measures more reliably than a 2-thread run (OpenMP barriers spin when the
    cores are oversubscribed); Dask workers are single-threaded too."""
    if stage != "vae" and not opts.get("scheduler"):
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(1)
        threadpool_limits(1)
    if opts.get("scheduler", "").startswith("local:"):
        row = dask_measure(stage, size, opts)
    else:
        row = MEASURE[stage](size, opts)
    row.update(stage=stage, size=size, scheduler=opts.get("scheduler", ""),
               peak_rss_mb=peak_rss_mb(),
               loadavg_1min=os.getloadavg()[0])
    return row


def dask_measure(stage: str, size, opts: dict) -> dict:
    """A ``local:N`` row: the cluster started first (timed apart), then the stage's work twice on it,
    reached by its address as a stage reaches any scheduler.  ``seconds`` is the second run (workers
    warm: what every stage after the first sees on a standing cluster); ``seconds_cold`` the first,
    which also pays the workers' imports and first data transfer; ``cluster_start_s`` the
    ``LocalCluster`` start that a ``local:N`` stage adds once."""
    from dask.distributed import LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=int(opts["scheduler"].partition(":")[2]), threads_per_worker=1,
                           processes=True, dashboard_address=None)
    start = time.perf_counter() - t0
    try:
        o = {**opts, "scheduler": cluster.scheduler_address}
        cold = MEASURE[stage](size, o)
        warm = MEASURE[stage](size, o)
    finally:
        cluster.close()
    return {**warm, "seconds_cold": cold["seconds"], "cluster_start_s": start}


def run_child(stage: str, size, opts: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, "--size", json.dumps(size), "--opts", json.dumps(opts)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPICOMPUTE_NO_PROGRESS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{stage} at {size} failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{stage:<10} size {str(size):>8} {row['scheduler'] or 'in-process':<10} {row['seconds']:8.2f} s  "
          f"peak RSS {row['peak_rss_mb']:6.0f} MB  load {row['loadavg_1min']:.2f}", flush=True)
    return row


# ----------------------------------------------------------------------------- model
def power_fit(x, y) -> tuple[float, float]:
    """Least squares of ``log y = log c + alpha log x``; returns (c, alpha)."""
    alpha, logc = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(math.exp(logc)), float(alpha)


#: memory grows with the size of what a stage holds: frames' per-frame quantities (N), the CC matrix (M^2),
#: the averages (M), the volumes (L^3)
MEMORY_POWER = {"classify2d": 1, "ccmatrix": 2, "orient": 1, "vae": 3}


def memory_fit(x, y_mb, p: int) -> tuple[float, float]:
    """Least squares of ``rss = a + b x^p`` (a: the interpreter and libraries, b: per unit); (a MB, b MB)."""
    x = np.asarray(x, float) ** p
    b, a = np.polyfit(x, np.asarray(y_mb, float), 1)
    return float(a), float(max(b, 0.0))


def _dask_row(rows: list[dict], stage: str, scheduler: str) -> dict | None:
    return next((r for r in rows if r["stage"] == stage and r["scheduler"] == scheduler), None)


def _in_process(rows: list[dict], stage: str, size) -> float | None:
    return next((r["seconds"] for r in rows if r["stage"] == stage and not r["scheduler"] and r["size"] == size),
                None)


def dask_overhead(rows: list[dict], stage: str) -> float | None:
    """Seconds a Dask run on warm workers costs beyond the in-process single-thread run at the same size
    (one single-threaded worker): shipping, scheduling, per-task repeated work.  None if not measured."""
    r = _dask_row(rows, stage, "local:1")
    t0 = None if r is None else _in_process(rows, stage, r["size"])
    return None if t0 is None else max(0.0, r["seconds"] - t0)


def dask_first_run(rows: list[dict], stage: str) -> float | None:
    """Seconds the first stage on fresh workers pays once on top (imports, first transfers): cold - warm."""
    r = _dask_row(rows, stage, "local:1")
    if r is None or "seconds_cold" not in r:
        return None
    return max(0.0, r["seconds_cold"] - r["seconds"])


def dask_table(rows: list[dict]) -> list[str]:
    """Markdown rows: in-process single thread vs. ``local:1`` / ``local:2`` (warm and cold) per stage."""
    out = ["| stage | size | in-process, 1 thread (s) | local:1 warm / cold (s) | local:2 warm / cold (s) | "
           "local:1 / in-process | local:2 / in-process | cluster start (s) |", "|---|---|---|---|---|---|---|---|"]
    for stage in MEASURE:
        r1, r2 = _dask_row(rows, stage, "local:1"), _dask_row(rows, stage, "local:2")
        if r1 is None or r2 is None:
            continue
        t0 = _in_process(rows, stage, r1["size"])
        if t0 is None:
            continue
        unit = " per iteration" if stage == "classify2d" else ""
        out.append(f"| {stage}{unit} | {r1['size']} | {t0:.2f} | {r1['seconds']:.2f} / {r1.get('seconds_cold', float('nan')):.2f} | "
                   f"{r2['seconds']:.2f} / {r2.get('seconds_cold', float('nan')):.2f} | {r1['seconds'] / t0:.2f} | "
                   f"{r2['seconds'] / t0:.2f} | {r1.get('cluster_start_s', float('nan')):.1f}, "
                   f"{r2.get('cluster_start_s', float('nan')):.1f} |")
    return out


def efficiency(rows: list[dict], stage: str) -> float | None:
    """Parallel efficiency of 2 single-threaded Dask workers: t(local:1) / (2 t(local:2))."""
    t = {r["scheduler"]: r["seconds"] for r in rows if r["stage"] == stage and r["scheduler"]}
    if "local:1" in t and "local:2" in t:
        return t["local:1"] / (2 * t["local:2"])
    return None


def fmt_time(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 3 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} d"


def model(rows: list[dict], opts: dict) -> dict:
    out = {}
    for stage in MEASURE:
        pts = [r for r in rows if r["stage"] == stage and not r["scheduler"]]
        if len(pts) < 2:
            continue
        x = [r["volume"] if stage == "vae" else r["size"] for r in pts]
        c, a = power_fit(x, [r["seconds"] for r in pts])
        ma, mb = memory_fit(x, [r["peak_rss_mb"] for r in pts], MEMORY_POWER[stage])
        out[stage] = {"sizes": x, "seconds": [r["seconds"] for r in pts], "alpha_time": a, "c_time": c,
                      "peak_rss_mb": [r["peak_rss_mb"] for r in pts], "memory_power": MEMORY_POWER[stage],
                      "memory_base_mb": ma, "memory_per_unit_mb": mb,
                      "dask_efficiency_2_workers": efficiency(rows, stage),
                      "dask_overhead_s": dask_overhead(rows, stage),
                      "dask_first_run_s": dask_first_run(rows, stage),
                      "loadavg": [r["loadavg_1min"] for r in pts]}
    return out


def machine(f: dict) -> float:
    """Speed-up of this 2-core machine over the measured single-thread rate (both cores busy)."""
    return 2.0


def mem(f: dict, size) -> float:
    """Projected peak RSS (MB) from :func:`memory_fit`."""
    return f["memory_base_mb"] + f["memory_per_unit_mb"] * float(size) ** f["memory_power"]


def _once(f: dict, per_use: float | None) -> float | None:
    """Overhead of a stage on the cluster: the recurring part plus, once, what fresh workers pay."""
    if per_use is None:
        return None
    return per_use + (f.get("dask_first_run_s") or 0.0)


def projections(fit: dict, rows: list[dict], opts: dict) -> list[dict]:
    """Rows of the projection table (seconds; None = not measured)."""
    proj = []
    if "classify2d" in fit:
        f = fit["classify2d"]
        per_it = f["c_time"] * PAPER_FRAMES ** f["alpha_time"] / machine(f)
        kr = (PAPER_K * PAPER_R) / (opts["K"] * opts["R"])
        whole = per_it * kr * PAPER_SUBSET * PAPER_RUNS * PAPER_ITER
        memory = mem(f, PAPER_FRAMES)
        stream = Path(opts.get("stream_json", ""))
        if stream.is_file():  # 2.45 M frames stream (stream: auto): memory from bench_stream's fit
            sf = json.loads(stream.read_text())["fits"]["classify2d"]
            memory = sf["rss_intercept_mb"] + sf["rss_bytes_per_frame"] * PAPER_FRAMES / 1e6
        proj.append({"stage": "classify2d", "case": f"2.45 M frames, 1 iteration, bench K={opts['K']} R={opts['R']}",
                     "this_machine": per_it, "overhead": _once(f, f["dask_overhead_s"]), "memory_mb": memory})
        proj.append({"stage": "classify2d", "case": f"paper run: 5 runs x 0.8 x 2.45 M, K={PAPER_K} R={PAPER_R}, "
                     f"{PAPER_ITER} iterations (x R K / {opts['R']*opts['K']})", "this_machine": whole,
                     "overhead": None if f["dask_overhead_s"] is None
                     else _once(f, f["dask_overhead_s"] * PAPER_RUNS * PAPER_ITER),
                     "memory_mb": None})
    for stage, label in (("ccmatrix", "CC matrix"), ("orient", "orientation fit")):
        if stage not in fit:
            continue
        f = fit[stage]
        for m in PAPER_AVERAGES:
            t = f["c_time"] * m ** f["alpha_time"] / machine(f)
            if stage == "orient":
                n_or = next(r["n_orientations"] for r in rows if r["stage"] == "orient")
                t *= PAPER_ORIENTATIONS / n_or
            proj.append({"stage": stage, "case": f"{m:,} averages" + (" x 16,407 orientations" if stage == "orient" else ""),
                         "this_machine": t, "overhead": _once(f, f["dask_overhead_s"]),
                         "memory_mb": mem(f, m)})
    if "vae" in fit:
        f = fit["vae"]
        per_batch = f["c_time"] * 161 ** f["alpha_time"]
        for m in PAPER_AVERAGES:
            proj.append({"stage": "vae", "case": f"161^3, one epoch of {m:,} averages (batch {opts['vae_batch']})",
                         "this_machine": per_batch * math.ceil(m / opts["vae_batch"]), "overhead": None,
                         "memory_mb": mem(f, 161)})
    return proj


def markdown(fit: dict, proj: list[dict], opts: dict, load: tuple, rows: list[dict] = ()) -> str:
    lines = ["| stage | sizes measured | time (s) | time exponent | peak RSS (MB) | memory model (MB) | "
             "2-worker Dask efficiency | Dask overhead (s) | load (1 min) |", "|---|---|---|---|---|---|---|---|---|"]
    for stage, f in fit.items():
        eff = f["dask_efficiency_2_workers"]
        eff_s = "" if eff is None else f"{eff:.2f}"
        ov = f.get("dask_overhead_s")
        eff_s += " | " + ("" if ov is None else f"{ov:.2f}")
        lines.append(f"| {stage} | {', '.join(str(s) for s in f['sizes'])} | "
                     f"{', '.join(f'{s:.3g}' for s in f['seconds'])} | {f['alpha_time']:.2f} | "
                     f"{', '.join(f'{s:.0f}' for s in f['peak_rss_mb'])} | "
                     f"{f['memory_base_mb']:.0f} + {f['memory_per_unit_mb']:.3g} x^{f['memory_power']} | "
                     f"{eff_s} | {', '.join(f'{v:.1f}' for v in f['loadavg'])} |")
    lines += ["", "Dask on this machine (warm: a second run on the same workers; cold: the first, with the "
              "workers' imports; the local cluster's start is timed apart):", ""] + dask_table(rows)
    lines += ["", "| stage | paper case | (a) this 2-core machine | (b) one GPU | "
              + " | ".join(f"(c) {n} nodes" for n in NODES) + " | memory (a) |",
              "|---|---|---|---|" + "---|" * len(NODES) + "---|"]
    for p in proj:
        cells = []
        for n in NODES:
            if p["overhead"] is None:
                cells.append("not measured")
            else:  # per-core time / all cores + the measured Dask overhead
                cells.append(fmt_time(p["this_machine"] * 2 / (n * opts["cores_per_node"]) + p["overhead"]))
        mem = "" if p["memory_mb"] is None else f"{p['memory_mb'] / 1024:.2g} GB"
        lines.append(f"| {p['stage']} | {p['case']} | {fmt_time(p['this_machine'])} | not measured | "
                     + " | ".join(cells) + f" | {mem} |")
    lines += ["", f"Load average during the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
              f"(1 / 5 / 15 min) on {os.cpu_count()} cores shared with other work.",
              "Times are fitted (t = c size^alpha) on single-thread in-process runs: the per-core rate. "
              "(a) = per-core time / 2 (both cores of an otherwise idle machine; the VAE row: its own torch "
              "threads, as measured). (c) = per-core time / (N x " + f"{opts['cores_per_node']}" + " cores) + the "
              "measured Dask overhead (warm local:1 minus in-process at the largest size; per iteration for classify2d, "
              "x 100 iterations for the paper run; plus, once, what fresh workers pay: cold minus warm): each core as fast as here, perfect division of the "
              "compute, no further loss to the network, the scheduler or the file system as N grows. "
              "The measured 2-worker efficiency on this shared 2-core machine is listed above; it is "
              "overhead-dominated at these small sizes. The VAE is not on Dask (torch DDP): not measured."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, ~1 min)")
    ap.add_argument("--stages", nargs="+", default=list(MEASURE))
    ap.add_argument("--cores-per-node", type=int, default=32, help="cores of one cluster node for (c)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--out", default="", help="result JSON (run_all.py); the markdown table goes next to it "
                    "(default: <out-dir>/scaling.json and scaling.md)")
    ap.add_argument("--stream-json", default=str(ROOT / "benchmarks" / "results" / "stream.json"),
                    help="bench_stream.py result: memory of the streamed classify2d at the paper's size")
    ap.add_argument("--from-json", default="", help="recompute fits and tables from a saved scaling.json")
    ap.add_argument("--child", default="")
    ap.add_argument("--size", default="0")
    ap.add_argument("--opts", default="{}")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.size), json.loads(args.opts))))
        return 0
    quick = args.quick
    opts = {"side": 64, "photons": 60.0, "K": 20, "R": 32, "q_max_nm": 0.3, "n_lines": 180, "n_r": 40,
            "num_div": 6 if quick else 20, "average_chunk": 256, "vae_batch": 4, "vae_batches": 1,
            "cores_per_node": args.cores_per_node, "stream_json": args.stream_json}
    sizes = {"classify2d": [2000, 4000, 8000] if quick else [25000, 50000, 100000],
             "ccmatrix": [50, 100, 200] if quick else [250, 500, 1000],
             "orient": [8, 16, 32] if quick else [256, 512, 1024],
             "vae": ["demo", "low"] if quick else ["demo", "low", "intermediate"]}
    rows = []
    t_start = time.perf_counter()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        rows, opts = saved["rows"], {**saved["options"], "cores_per_node": args.cores_per_node,
                                     "stream_json": args.stream_json}
        args.stages = []
    for stage in args.stages:
        for s in sizes[stage]:
            rows.append(run_child(stage, s, opts))
        if stage != "vae":
            for sched in ("local:1", "local:2"):
                rows.append(run_child(stage, sizes[stage][-1], {**opts, "scheduler": sched}))
    fit = model(rows, opts)
    proj = projections(fit, rows, opts)
    load = tuple(saved["loadavg_end"]) if args.from_json else os.getloadavg()
    md = markdown(fit, proj, opts, load, rows)
    json_path = Path(args.out) if args.out else Path(args.out_dir) / "scaling.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps({"options": opts, "rows": rows, "fits": fit, "projections": proj,
                                                  "loadavg_end": load,
                                                  "seconds": saved["seconds"] if args.from_json else time.perf_counter() - t_start},
                                                 indent=2))
    md_path.write_text(md + "\n")
    print("\n" + md)
    print(f"\n-> {json_path}, {md_path}  ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
