"""Run every benchmark with its default (reference-sized) workload.

    python benchmarks/run_all.py [--only simulate emc2d ...] [--out-dir benchmarks/results]

Each ``bench_<name>.py`` prints its own table and writes
``<out-dir>/<name>.json``; this script runs them one after another (never in
parallel: they would steal each other's cores) and prints a summary: every
figure next to its reference, as a ratio, with the 1-minute load average
before and after the benchmark.  A reference is either a target (the issue's
number) or a figure measured in the same run (the machine's sgemm peak, the
numpy phasing next to torch's); comparisons with other tools (Dragonfly) are
``make bench-peers``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=names, default=names)
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, loads = [], {}
    for name in args.only:
        out = out_dir / f"{name}.json"
        print(f"=== {name} ===", flush=True)
        start, before = time.perf_counter(), os.getloadavg()[0]
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), "--out", str(out)])
        loads[name] = (before, os.getloadavg()[0])
        print(f"--- {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    rows = []
    for name in args.only:
        out = out_dir / f"{name}.json"
        if out.exists():
            rows += [(name, *r, *loads[name]) for r in summary_rows(name, json.loads(out.read_text()))]
    print("\n" + format_summary(rows))
    (out_dir / "summary.md").write_text(format_summary(rows) + "\n")
    return 1 if failed else 0


def _ratio(value, reference, higher_is_better: bool) -> float | None:
    if not value or not reference:
        return None
    return value / reference if higher_is_better else reference / value


def summary_rows(name: str, r) -> list[tuple]:
    """(figure, value, unit, reference, what the reference is, ratio >= 1 = better) per figure."""
    rows = []
    if name == "simulate":
        rows.append(("20,000 frames of 129²", r.get("seconds_total"), "s", r.get("target_seconds"), "target",
                     _ratio(r.get("seconds_total"), r.get("target_seconds"), False)))
    elif name == "ccmatrix":
        peak = r.get("numpy_sgemm_peak_gflops")
        for case in r.get("cases", []):
            rows.append((f"CC matrix {case.get('case')} ({case.get('backend')})", case.get("gflops"), "GFLOP/s",
                         peak, "sgemm peak, same run", _ratio(case.get("gflops"), peak, True)))
            if case.get("case") == "M=1000":
                rows.append((f"CC matrix of 1,000 averages ({case.get('backend')}, block {case.get('block')})",
                             case.get("seconds"), "s", 10.0, "target (issue 20)",
                             _ratio(case.get("seconds"), 10.0, False)))
            if "max_abs_dcc" in case:   # the bf16 screen against the float32 result of the same run
                exact = case["max_abs_dcc"] == 0   # identical CCs: no finite ratio to print
                rows.append((f"CC matrix {case.get('case')} bf16 screen: max |dCC| vs float32"
                             + (" (identical)" if exact else ""), case["max_abs_dcc"], "", 2e-3,
                             "tolerance (issue 20)", None if exact else _ratio(case["max_abs_dcc"], 2e-3, False)))
                rows.append((f"CC matrix {case.get('case')} bf16 screen: pairs with the same best angles",
                             case["share_same_angles"], "", 0.99, "target (issue 20)",
                             _ratio(case["share_same_angles"], 0.99, True)))
    elif name == "emc2d":
        rows.append((f"2D EMC iteration, {r.get('frames')} frames", r.get("median_seconds_per_iteration"), "s",
                     None, "Dragonfly: make bench-peers", None))
        late = (r.get("pruning") or {}).get("late_ratio_median")
        if late is not None:   # a time ratio: the target over the measured one
            rows.append(("late pruned / unpruned E-step iteration", late, "x", 0.3, "issue 20 target",
                         _ratio(late, 0.3, False)))
    elif name == "scaling":
        for stage in ("classify2d", "ccmatrix", "orient"):
            t0 = next((x["seconds"] for x in r.get("rows", []) if x["stage"] == stage and not x["scheduler"]
                       and x["size"] == max((y["size"] for y in r["rows"] if y["stage"] == stage), default=None)),
                      None)
            for sched, target in (("local:1", 1.10), ("local:2", 0.65)):
                t = next((x["seconds"] for x in r.get("rows", []) if x["stage"] == stage and x["scheduler"] == sched),
                         None)
                if t and t0:
                    rows.append((f"Dask {sched} / in-process, {stage}", t / t0, "x", target, "issue 20 target",
                                 _ratio(t / t0, target, False)))
    elif name == "orient":
        for row in r.get("rows", []):
            rows.append((f"orient {row.get('averages')} averages × {row.get('orientations')} (r_max "
                         f"{row.get('r_max')})", row.get("seconds"), "s", None, "", None))
    elif name == "phase":
        items = r if isinstance(r, list) else []
        numpy_s = {x["size"]: x["seconds"] for x in items if x.get("backend", "numpy") == "numpy"}
        for x in items:
            ref = numpy_s.get(x["size"]) if x.get("backend") == "torch" else None
            rows.append((f"phase {x['size']}³ ({x.get('backend', 'numpy')}, {x.get('device', 'cpu')})", x["seconds"],
                         "s/volume", ref, "numpy, same run" if ref else "", _ratio(x["seconds"], ref, False)))
    elif name == "dashboard":
        for key, val in r.items():
            if isinstance(val, dict) and "median_s" in val:
                target = val.get("target_s")
                rows.append((f"dashboard {key}", val["median_s"], "s", target, "target" if target else "",
                             _ratio(val["median_s"], target, False)))
    elif name == "vae":
        for row in r.get("rows", []):
            if "seconds_per_batch" in row:
                rows.append((f"VAE {row.get('preset')} batch ({row.get('device')})", row["seconds_per_batch"],
                             "s", None, "", None))
    elif name == "euxfel":
        for label, val in (r.get("results") or {}).items():
            rows.append((f"EuXFEL ingest {label}", val.get("frames_per_s"), "frames/s", None, "", None))
    if not rows:
        rows.append(("(see the JSON)", None, "", None, "", None))
    return rows


def format_summary(rows: list[tuple]) -> str:
    def num(v):
        return "—" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    lines = ["| benchmark | figure | measured | reference | ratio (≥ 1: better) | load before → after |",
             "|---|---|---|---|---|---|"]
    for name, figure, value, unit, ref, what, ratio, l0, l1 in rows:
        refs = "—" if ref is None else f"{num(ref)} {unit} ({what})"
        lines.append(f"| {name} | {figure} | {num(value)} {unit} | {refs} | {num(ratio)} | {l0:.1f} → {l1:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
