"""Can a coarse angular search replace the exhaustive common-line search?  (issue 20, item 2)

The exhaustive CC matrix scores every line pair of every average pair; its 10,000-average
cost is (M n_lines)^2 products.  A coarse search would score every ``step``-th line on both
sides (``step**2`` fewer products), keep each pair's ``candidates`` best coarse columns and
refine them in float32 on the full angular grid (every line pair within ``max(1, step // 2)``
lines of a candidate).  That is exact only where the CC over line pairs varies slowly on the
scale of a coarse step.  This probe measures whether it does, against the float32 exhaustive
result of the same lines:

- per (step, candidates): the share of pairs with the same best angles (or within one step),
  the share with |dCC| <= 2e-3 and the largest |dCC|;
- the *peak sharpness*: per pair, the drop of the CC one line away from the exhaustive best
  (the smaller of the two neighbours, along theta_a and along theta_b), median and 90th
  percentile.  A drop comparable to the spread of the CCs means a coarse grid steps over the
  peak.

Run on the synthetic speckle averages of ``bench_ccmatrix.py`` and on the ccmatrix stage's
own lines (its q range and normalisation) of real class-averages files::

    PYTHONPATH=. python benchmarks/probe_coarse_angles.py --m 300 \
        --averages data/averages.h5 --out benchmarks/measured/coarse_angles_<date>.json

The search itself lives here, not in the package: it failed the issue's accuracy bar
(docs/scaling.md, "A coarse angular search"), so no backend offers it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_ccmatrix import accuracy_against, prepare_lines  # noqa: E402

from spicompute.landscape import commonlines as cl  # noqa: E402

CONFIGS = [(1, 1), (2, 1), (2, 4), (2, 8), (2, 16), (3, 8)]


def coarse_search(lines: np.ndarray, step: int, candidates: int) -> cl.CCResult:
    """The coarse angular search over all pairs (float32 coarse scores, float32 refinement).

    lines : (M, n_lines, n_r) unit lines.  Row by row of averages: bounded memory, no speed
    claim (the accuracy is the question).
    """
    m, nl, nr = lines.shape
    coarse_index = np.arange(0, nl, step)
    reach = max(1, step // 2)
    offsets = np.arange(-reach, reach + 1)
    width = len(offsets)
    coarse = lines[:, coarse_index]                                       # (m, nlc, nr)
    res = cl.CCResult(np.zeros((m, m), np.float32), np.zeros((m, m), np.int16),
                      np.zeros((m, m), np.int16))
    for a in range(m - 1):
        others = np.arange(a + 1, m)
        prod = np.einsum("ir,bjr->bij", coarse[a], coarse[others])        # (b, nlc, nlc)
        col_best = prod.max(axis=1)                                       # (b, nlc)
        k = min(candidates, len(coarse_index))
        col_b = np.argsort(-col_best, axis=1)[:, :k]                      # (b, k)
        col_a = np.take_along_axis(prod.argmax(axis=1), col_b, axis=1)    # (b, k)
        fine_a = (coarse_index[col_a][..., None] + offsets) % nl          # (b, k, w)
        fine_b = (coarse_index[col_b][..., None] + offsets) % nl
        la = lines[a][fine_a]                                             # (b, k, w, nr)
        lb = lines[others[:, None, None], fine_b]                         # (b, k, w, nr)
        exact = np.einsum("bkir,bkjr->bkij", la, lb).reshape(len(others), -1)
        where = exact.argmax(axis=1)
        cand, rest = np.divmod(where, width * width)
        oi, oj = np.divmod(rest, width)
        rows = np.arange(len(others))
        res.cc[a, others] = exact[rows, where]
        res.angle_a[a, others] = fine_a[rows, cand, oi]
        res.angle_b[a, others] = fine_b[rows, cand, oj]
    iu = np.triu_indices(m, 1)
    res.cc[iu[1], iu[0]] = res.cc[iu]
    return res


def peak_sharpness(lines: np.ndarray, ref: cl.CCResult, n_pairs: int = 2000, seed: int = 0) -> dict:
    """CC drop one line away from the exhaustive best, on ``n_pairs`` random pairs i < j."""
    m, nl, _ = lines.shape
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(m, 1)
    pick = rng.choice(len(i), size=min(n_pairs, len(i)), replace=False)
    drops, spread = [], []
    for a, b in zip(i[pick], j[pick]):
        full = lines[a] @ lines[b].T                                      # (nl, nl)
        ia, ib = int(ref.angle_a[a, b]), int(ref.angle_b[a, b])
        best = full[ia, ib]
        neighbours = [full[(ia - 1) % nl, ib], full[(ia + 1) % nl, ib],
                      full[ia, (ib - 1) % nl], full[ia, (ib + 1) % nl]]
        drops.append(best - max(neighbours))
        spread.append(best - np.median(full))
    drops, spread = np.asarray(drops), np.asarray(spread)
    return {"drop_one_line_median": float(np.median(drops)), "drop_one_line_p90": float(np.percentile(drops, 90)),
            "best_minus_median_cc": float(np.median(spread)),
            "drop_over_spread_median": float(np.median(drops / np.maximum(spread, 1e-9)))}


def stage_lines(path: str, params_path: str) -> np.ndarray:
    """The ccmatrix stage's normalised lines of the usable averages of one file."""
    import yaml

    from spicompute.io.averages import read_averages
    from spicompute.landscape import ccmatrix as ccm
    from spicompute.stages.ccmatrix import DEFAULTS

    p = {**DEFAULTS, **(yaml.safe_load(Path(params_path).read_text()).get("ccmatrix") or {})}
    captured = {}
    original = ccm.cl.cc_matrix

    def capture(lines, **kw):
        captured["lines"] = lines
        return original(lines, **kw)

    ccm.cl.cc_matrix = capture
    try:
        ccm.compute_ccmatrix(read_averages(path), {**p, "backend": "numpy", "block": 0, "device": "cpu"})
    finally:
        ccm.cl.cc_matrix = original
    lines = captured["lines"]
    return lines[np.abs(lines).sum(axis=(1, 2)) > 0]                     # unusable rows are 0


def probe(name: str, lines: np.ndarray) -> dict:
    m, nl, nr = lines.shape
    ref = cl.cc_matrix(lines, backend="numpy", device="cpu")
    case = {"case": name, "m": m, "n_lines": nl, "n_r": nr, **peak_sharpness(lines, ref), "searches": []}
    for step, k in CONFIGS:
        t = time.perf_counter()
        res = coarse_search(lines, step, k)
        row = {"step": step, "candidates": k, **accuracy_against(res, ref, nl),
               "seconds_numpy_probe": time.perf_counter() - t}
        case["searches"].append(row)
        print(f"{name}: step {step} candidates {k:2d}: same angles {row['share_same_angles']:.3f}, "
              f"within one step {row['share_angles_within_one_step']:.3f}, |dCC| <= 2e-3 "
              f"{row['share_within_2e-3']:.3f}, max |dCC| {row['max_abs_dcc']:.3f}", flush=True)
    print(f"{name}: CC drop one line from the best: median {case['drop_one_line_median']:.3f} "
          f"(best - median CC {case['best_minus_median_cc']:.3f})", flush=True)
    return case


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=300, help="synthetic averages (0: none)")
    ap.add_argument("--averages", nargs="*", default=[], help="class-averages files (the stage's lines)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    cases = []
    if args.m:
        lines, _, _ = prepare_lines(args.m, 129, 180)
        cases.append(probe(f"synthetic speckle, M={args.m}", lines))
    for path in args.averages:
        cases.append(probe(path, stage_lines(path, args.params)))
    import os

    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()[0],
              "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
