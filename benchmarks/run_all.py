"""Run every benchmark with its default (reference-sized) workload.

    python benchmarks/run_all.py [--only simulate emc2d ...] [--out-dir benchmarks/results]

Each ``bench_<name>.py`` prints its own table and writes
``<out-dir>/<name>.json``; this script runs them one after another (never in
parallel: they would steal each other's cores) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
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
    failed = []
    for name in args.only:
        out = out_dir / f"{name}.json"
        print(f"=== {name} ===", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), "--out", str(out)])
        print(f"--- {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    print("\nsummary:")
    for name in args.only:
        out = out_dir / f"{name}.json"
        if out.exists():
            print(f"  {name}: {json.dumps(json.loads(out.read_text()))[:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
