"""Average-level check of the CLPCA landscape on a small low-photon simulated set.

Simulates (simulate stage), classifies (classify2d), then runs ccmatrix + embed
with the signal-limited q range (default min_counts) and with coverage only
(min_counts 0), and prints per setting: q range, the best Spearman |rho| of a
pc with the members' mean melt parameter (family averages), each pc's |rho|
with n_frames and mean photons, and each pc's excess of nuisance over shape
(:func:`spicompute.validation.nuisance_excess`: point value and the bootstrap
5th percentile; > 0 there means significantly more nuisance than shape).

    PYTHONPATH=. python benchmarks/landscape_lowphoton.py --photons 400 --frames 6000 [--models 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from scipy.stats import spearmanr

from spicompute.cli import main
from spicompute.io.truth import read_truth
from spicompute.landscape.nuisance import nuisance_table
from spicompute.validation import average_truth, landscape_excess

REPO = Path(__file__).resolve().parents[1]


def stage(root: Path, name: str, stages: dict, params: Path, extra=()):
    argv = stages[name]["cmd"].split()[1:]
    argv = [a if not a.startswith(("data/", "results/", "metrics/", "models/", "dvclive/",
                                   "checkpoints/")) else str(root / a) for a in argv]
    argv = [str(params) if a == "params.yaml" else a for a in argv]
    assert main(argv + list(extra) + ["-q"]) == 0, name


def main_(args):
    root = Path(args.workdir or tempfile.mkdtemp(prefix="lowphoton-"))
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["simulate"].update(n_frames=args.frames, detector_size=args.detector, binning=args.binning,
                              photons_mean=args.photons, background_photons=args.background, seed=args.seed)
    params["classify2d"].update(n_runs=args.runs, n_models=args.models, max_iter=14, min_iter=8,
                                background=args.emc_background, seed=args.emc_seed)
    params["embed"].update(methods=["pc"])
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    pfile = root / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    for name in ("frames", "classify2d"):
        stage(root, name, stages, pfile)
    per = average_truth(pd.read_parquet(root / "results" / "frames.parquet"), read_truth(root / "data" / "truth.h5"))
    out = {}
    for label, min_counts in (("signal", params["ccmatrix"].get("min_counts", 1.0)), ("coverage", 1e-12)):
        params["ccmatrix"]["min_counts"] = min_counts
        pfile.write_text(yaml.safe_dump(params))
        stage(root, "ccmatrix", stages, pfile)
        stage(root, "embed", stages, pfile)
        cc = json.loads((root / "metrics" / "ccmatrix.json").read_text())
        em = json.loads((root / "metrics" / "embed.json").read_text())
        table = pd.read_parquet(root / "results" / "parts" / "embed.parquet").merge(per, on="average_id")
        fam = table[(table["contaminant"] < 0.2) & (table["members"] >= 5) & table["landscape_usable"]]
        rho_t = [abs(spearmanr(fam[f"pc_{k}"], fam["melt_t"])[0]) for k in (1, 2, 3)]
        nuis = em["nuisance_spearman"]
        usable = table[table["landscape_usable"].astype(bool)].merge(
            nuisance_table(str(root / "results" / "frames.parquet"), str(root / "data" / "frames.h5"),
                           table["average_id"].to_numpy()), on="average_id")
        excess = landscape_excess(usable)
        out[label] = {"q_min_nm": cc["q_min_nm"], "q_max_nm": cc["q_max_nm"], "q_max_limits": cc["q_max_limits"],
                      "n_family": int(len(fam)), "rho_melt": [round(r, 3) for r in rho_t],
                      "rho_n_frames": [round(abs(nuis[f"pc_{k}"]["n_frames"] or 0), 3) for k in (1, 2, 3)],
                      "rho_photons": [round(abs(nuis[f"pc_{k}"]["mean_photons"] or 0), 3) for k in (1, 2, 3)],
                      "excess": [round(float(v), 3) for v in excess.excess],
                      "excess_p05": [round(float(v), 3) for v in excess.lower]}
        print(label, json.dumps(out[label]))
    if args.out:
        cl = json.loads((root / "metrics" / "classify2d.json").read_text())
        out["classify2d"] = {k: cl[k] for k in cl if k.startswith("resolved_background")
                             or k in ("photon_sorting_f", "truth_sorting_f", "shape_purity")}
        out["settings"] = {"photons": args.photons, "background": args.background,
                           "detector": args.detector, "binning": args.binning,
                           "frames": args.frames, "runs": args.runs, "seed": args.seed,
                           "models": args.models, "emc_seed": args.emc_seed,
                           "classify2d_background": args.emc_background}
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--photons", type=float, default=400.0)
    ap.add_argument("--background", type=float, default=50.0)
    ap.add_argument("--detector", type=int, default=65)
    ap.add_argument("--binning", type=int, default=4)
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--models", type=lambda v: v if v == "auto" else int(v), default="auto",
                    help="classify2d.n_models: a number or auto (frames per run / frames_per_class 80)")
    ap.add_argument("--emc-seed", type=int, default=0, help="classify2d.seed")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--workdir", default="")
    ap.add_argument("--emc-background", default="auto", choices=["auto", "none"],
                    help="classify2d.background")
    ap.add_argument("--out", default="", help="write the results as JSON")
    main_(ap.parse_args())
