"""Is this installation giving the reference results?

Compares the metrics of a fresh run (``metrics/*.json`` in the workspace)
with the committed baseline (the same files at a git revision, ``HEAD`` by
default) and prints one verdict line per stage::

    python -m spicompute.check_baseline [--rev HEAD] [--metrics metrics]

Numbers must agree within the stage's tolerance (:data:`TOLERANCES`,
relative, with an absolute floor of :data:`ABS_FLOOR` for values near zero);
strings, booleans and list lengths must be equal.  Timings and the machine
(``seconds*``, ``device``, ``processes``, throughput) are not science and are
skipped.  Exit status 0 when every stage agrees, 1 otherwise, 2 when the
baseline cannot be read.

Why tolerances and not hashes: HDF5 and torch files carry the bytes of the
compression library and of the CPU's floating-point kernels (BLAS, FFT,
vectorised float32 sums differ in the last bits between CPU models), so
``dvc.lock`` hashes of arrays computed in floating point are not portable
across machines even when the science agrees to 1e-10.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

#: relative tolerance per stage (default :data:`DEFAULT_TOLERANCE`): the stages that optimise
#: (EMC, network training, phase retrieval) amplify last-bit differences of float32 kernels
TOLERANCES = {"classify2d": 1e-4, "orient": 1e-4, "regress": 1e-3, "vae": 1e-3, "phase": 1e-3}
DEFAULT_TOLERANCE = 1e-6
ABS_FLOOR = 1e-9
#: keys that measure the machine, not the science
SKIP = re.compile(r"^(seconds.*|.*_seconds|gflops.*|device|processes|threads|.*per_s(ec)?|peak_.*|.*_mib)$")


def compare(fresh, base, tol: float, where: str = "") -> list[str]:
    """Differences between two metrics documents beyond ``tol`` (one line each)."""
    if isinstance(base, dict) and isinstance(fresh, dict):
        out = []
        for key in sorted(set(base) | set(fresh)):
            if SKIP.match(str(key)):
                continue
            sub = f"{where}.{key}" if where else str(key)
            if key not in fresh:
                out.append(f"{sub} missing in the fresh run")
            elif key not in base:
                out.append(f"{sub} not in the baseline")
            else:
                out += compare(fresh[key], base[key], tol, sub)
        return out
    if isinstance(base, list) and isinstance(fresh, list):
        if len(base) != len(fresh):
            return [f"{where}: {len(fresh)} entries, baseline {len(base)}"]
        return [d for i, (f, b) in enumerate(zip(fresh, base)) for d in compare(f, b, tol, f"{where}[{i}]")]
    numbers = (int, float)
    if isinstance(base, numbers) and isinstance(fresh, numbers) and not isinstance(base, bool) \
            and not isinstance(fresh, bool):
        if math.isnan(base) and math.isnan(fresh):
            return []
        if abs(fresh - base) <= max(tol * abs(base), ABS_FLOOR):
            return []
        rel = abs(fresh - base) / abs(base) if base else math.inf
        return [f"{where}: {fresh!r} vs baseline {base!r} (relative {rel:.2g} > {tol:g})"]
    return [] if fresh == base else [f"{where}: {fresh!r} vs baseline {base!r}"]


def _baseline(rev: str, rel_path: str, cwd: Path) -> dict | None:
    proc = subprocess.run(["git", "show", f"{rev}:{rel_path}"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def check(workspace: Path, rev: str = "HEAD", metrics: str = "metrics") -> tuple[list[str], bool]:
    """(verdict lines, all agree) for every ``<metrics>/*.json`` of the baseline or the fresh run."""
    listed = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{metrics}"], cwd=workspace,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        raise RuntimeError(f"no committed {metrics}/ at {rev} ({' '.join(listed.stderr.split())})")
    names = {n for n in listed.stdout.split() if n.endswith(".json")}
    names |= {p.name for p in (workspace / metrics).glob("*.json")}
    lines, ok = [], True
    for name in sorted(names):
        stage = name[:-5]
        tol = TOLERANCES.get(stage, DEFAULT_TOLERANCE)
        path = workspace / metrics / name
        base = _baseline(rev, f"{metrics}/{name}", workspace)
        if base is None:
            lines.append(f"{stage}: NEW (no baseline at {rev}; commit it with `make baseline`)")
            continue
        if not path.is_file():
            lines.append(f"{stage}: NOT RUN (no {metrics}/{name}; run `dvc repro`)")
            ok = False
            continue
        try:
            fresh = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            lines.append(f"{stage}: DIFFERS ({metrics}/{name} is not valid JSON: {exc.msg})")
            ok = False
            continue
        diffs = compare(fresh, base, tol)
        if diffs:
            more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
            lines.append(f"{stage}: DIFFERS {diffs[0]}{more}")
            ok = False
        else:
            lines.append(f"{stage}: OK (within {tol:g} relative of {rev})")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spicompute.check_baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD", help="git revision of the baseline (default HEAD)")
    parser.add_argument("--metrics", default="metrics", help="metrics folder (default metrics)")
    parser.add_argument("--workspace", default=".", help="project folder (default .)")
    args = parser.parse_args(argv)
    try:
        lines, ok = check(Path(args.workspace), args.rev, args.metrics)
    except (RuntimeError, json.JSONDecodeError) as exc:
        print(f"check-baseline: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print("baseline: " + ("reproduced" if ok else "NOT reproduced (see the lines above)"))
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
