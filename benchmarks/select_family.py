"""Family purity and recall of select.mode family on simulated project folders.

For each folder (a project root, or a ``landscape_lowphoton.py --workdir``
after ccmatrix / embed at the default ``min_counts`` and orient), runs the
select logic with the folder's params (mode family, and mode all for
reference) and a scan of ``select.family_k``, and prints purity / recall
against the simulation truth (majority true class of each average's member
frames; family = cube, melt, sphere).  Read-only: nothing is written.

    PYTHONPATH=. python benchmarks/select_family.py /work/main /tmp/lp3 [--k 16 22 30]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from spicompute.io.tables import merge_parts, read_table
from spicompute.io.truth import read_truth
from spicompute.landscape.training_set import select_averages, truth_scores
from spicompute.stages.select import options


def scores(root: Path, overrides: dict) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text()) or {}
    raw = {k: v for k, v in (params.get("select") or {}).items() if not k.startswith("family_")}
    raw.update(overrides)
    p = options(raw)
    parts = [read_table(root / "results" / "parts" / f"{n}.parquet") for n in ("classify2d", "embed", "orient")]
    table = merge_parts(parts[0], parts[1:])
    selected, _, min_frames = select_averages(table, p)
    frames = read_table(root / "results" / "frames.parquet")
    truth = read_truth(root / "data" / "truth.h5")
    usable = table["n_frames"].to_numpy(float) >= min_frames
    out = truth_scores(table["average_id"].to_numpy(), selected, usable, frames, truth)
    return {"kept": int(selected.sum()), "n_averages": len(table), "purity": round(out["family_purity"], 3),
            "recall": round(out["family_recall"], 3), "kept_classes": out["selected_classes"]}


def main(args) -> dict:
    result = {}
    for folder in args.folders:
        root = Path(folder)
        rows = {"family (defaults)": scores(root, {"mode": "family"}),
                "all": scores(root, {"mode": "all"})}
        for k in args.k:
            rows[f"family k={k}"] = scores(root, {"mode": "family", "family_k": k})
        result[str(root)] = rows
        for name, row in rows.items():
            print(f"{root}  {name:18s} kept {row['kept']:4d}/{row['n_averages']:4d}  purity {row['purity']:.3f}  "
                  f"recall {row['recall']:.3f}  {row['kept_classes']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", help="project roots with data/truth.h5, results/frames.parquet, "
                    "results/parts/{classify2d,embed,orient}.parquet and params.yaml")
    ap.add_argument("--k", type=int, nargs="*", default=[], help="also scan these select.family_k")
    ap.add_argument("--out", default="", help="write the results as JSON")
    main(ap.parse_args())
