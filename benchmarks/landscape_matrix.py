"""The CLPCA landscape across a matrix of sample and beam conditions (issue 22).

Each cell is a simulated data set that differs from a base cell in what real
samples and beams vary -- photons and background per frame, size spread, melt
at constant or growing volume, fluence law (log-uniform or with a halo of weak
hits), contaminant share, melt distribution (uniform or mostly cubes and
spheres), detector (129^2 binned or 255^2 unbinned, off-centre) -- one factor at
a time plus two combinations.  Every cell runs the default pipeline up to
``embed`` (frames, classify2d, ccmatrix, embed with pc + spectral) with the
project's defaults except the workload (``--frames``, ``--runs``, 14 EMC
iterations), and reports:

* ``best_rho``: the largest |Spearman| of pc_1..3 with the members' mean melt
  parameter over the family averages (contaminant share < 0.2, >= 5 members),
  and which component; the same for the spectral embedding;
* ``worst_excess``: the largest nuisance excess (|rho| with photons per frame or
  occupancy minus |rho| with the best shape reference,
  :func:`spicompute.validation.landscape_excess`) with its bootstrap 5-95 % band;
* ``purity`` against the naive radial-profile baseline (classify2d's
  ``shape_purity``);
* ``reproduced``: whether the best component is reproduced by disjoint run
  halves (``metrics/embed.json`` component_stability: what a user can see
  without truth);
* seconds per stage.

    PYTHONPATH=. python benchmarks/landscape_matrix.py [--cells base photons_300 ...]
        [--frames 6000] [--runs 4] [--workdir DIR] [--out benchmarks/measured/landscape_matrix.json]

``--oracle counts`` reruns ``ccmatrix`` + ``embed`` of finished cells on oracle averages
(:mod:`spicompute.simulation.oracle`: each average replaced by one sharp view of its
members' shape at their own photons; ``noisefree`` without the Poisson draw), at the cell's
own resolved q range: the bound on what any classification into the same classes could give
the landscape.  ``--seed`` then seeds the Poisson draw.

Every cell's parameters are checked before anything runs: a cell that cannot
be simulated stops the matrix with one line naming the cell and the parameter.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spicompute.cli import main as cli_main  # noqa: E402
from spicompute.errors import ParameterError  # noqa: E402

DEFAULT_FRACTIONS = {"cube": 0.25, "melt": 0.45, "sphere": 0.15, "dimer": 0.05, "rod": 0.04, "aggregate": 0.06}


def contaminant_share(share: float) -> dict:
    """Class fractions with ``share`` of dimers, rods and aggregates (their default proportions)."""
    fam = {k: DEFAULT_FRACTIONS[k] for k in ("cube", "melt", "sphere")}
    con = {k: DEFAULT_FRACTIONS[k] for k in ("dimer", "rod", "aggregate")}
    f_sum, c_sum = sum(fam.values()), sum(con.values())
    return {**{k: (1 - share) * v / f_sum for k, v in fam.items()}, **{k: share * v / c_sum for k, v in con.items()}}


# simulate overrides per cell, on top of BASE
BASE = {"photons_mean": 800.0, "background_photons": 100.0}
CELLS = {
    "base": {},
    "photons_300": {"photons_mean": 300.0, "background_photons": 50.0},
    "photons_2000": {"photons_mean": 2000.0, "background_photons": 200.0},
    "size_2pct": {"size_jitter": 0.02},
    "size_6pct": {"size_jitter": 0.06},
    "constant_volume": {"melt_volume_growth": 0.0},
    "fluence_halo": {"fluence_tail_fraction": 0.3, "fluence_tail_decades": 1.0},
    "contaminants_5pct": {"fractions": contaminant_share(0.05)},
    "contaminants_30pct": {"fractions": contaminant_share(0.30)},
    "bimodal_melt": {"melt_beta_shape": 0.3},
    "unbinned_255_offcentre": {"detector_size": 255, "binning": 1, "beam_center_px": [120.0, 138.0],
                               "beamstop_radius_px": 6},
    "hard_combo": {"photons_mean": 300.0, "background_photons": 100.0, "size_jitter": 0.06,
                   "fluence_tail_fraction": 0.3},
    "sample_combo": {"fractions": contaminant_share(0.30), "melt_beta_shape": 0.3, "melt_volume_growth": 0.0},
}


def cell_params(name: str, frames: int, runs: int, seed: int) -> dict:
    """The full params.yaml of a cell (ParameterError naming the cell and parameter if impossible)."""
    from spicompute.simulation.simulate import SimulationParams

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    sim = params["simulate"]
    sim.update(copy.deepcopy(BASE))
    sim.update(copy.deepcopy(CELLS[name]))
    sim.update(n_frames=frames, seed=seed)
    try:
        SimulationParams.from_dict(sim)
    except ParameterError as exc:
        raise ParameterError(f"{exc.name} (cell {name})", exc.problem) from None
    params["classify2d"].update(n_runs=runs, n_models="auto", max_iter=14, min_iter=8)
    params["embed"].update(methods=["pc", "spectral"])
    return params


def run_stage(root: Path, name: str, stages: dict, pfile: Path) -> float:
    argv = stages[name]["cmd"].split()[1:]
    argv = [a if not a.startswith(("data/", "results/", "metrics/", "models/", "dvclive/", "checkpoints/"))
            else str(root / a) for a in argv]
    argv = [str(pfile) if a == "params.yaml" else a for a in argv]
    t = time.perf_counter()
    rc = cli_main(argv + ["-q"])
    if rc != 0:
        raise RuntimeError(f"stage {name} failed in {root} (exit {rc})")
    return time.perf_counter() - t


def per_average_truth(root: Path) -> pd.DataFrame:
    """Members' mean melt, contaminant share, size and count per average (:func:`average_truth`)."""
    from spicompute.io.truth import read_truth
    from spicompute.validation import average_truth

    frames = pd.read_parquet(root / "results" / "frames.parquet")
    return average_truth(frames, read_truth(root / "data" / "truth.h5"))


def cell_stability(root: Path) -> dict:
    """Run-half reproducibility of pc_1..3 recomputed from the cell's files (the current code)."""
    from spicompute.landscape.commonlines import read_ccmatrix
    from spicompute.landscape.stability import component_stability

    ccf = read_ccmatrix(root / "data" / "ccmatrix.h5")
    part = pd.read_parquet(root / "results" / "parts" / "embed.parquet").set_index("average_id")
    runs = pd.read_parquet(root / "results" / "parts" / "classify2d.parquet").set_index("average_id")["run"]
    pcs = part.reindex(ccf.average_id)[["pc_1", "pc_2", "pc_3"]].to_numpy()
    res = component_stability(ccf.cc, ccf.usable, pcs, runs.reindex(ccf.average_id).to_numpy())
    return res.as_dict()["components"]


def score_cell(root: Path) -> dict:
    from spicompute.landscape.nuisance import nuisance_table
    from spicompute.validation import landscape_excess

    per = per_average_truth(root)
    table = pd.read_parquet(root / "results" / "parts" / "embed.parquet").merge(per, on="average_id")
    usable = table[table["landscape_usable"].astype(bool)]
    fam = usable[(usable["contaminant"] < 0.2) & (usable["members"] >= 5)]

    def best(prefix):
        cols = [c for c in table.columns if c.startswith(prefix + "_")]
        rho = [abs(float(spearmanr(fam[c], fam["melt_t"])[0])) for c in cols]
        k = int(np.nanargmax(rho))
        return cols[k], round(rho[k], 3), [round(r, 3) for r in rho]

    pc_name, pc_rho, pc_all = best("pc")
    sp_name, sp_rho, _ = best("spectral")
    with_nuisance = usable.merge(nuisance_table(str(root / "results" / "frames.parquet"),
                                                str(root / "data" / "frames.h5"), usable["average_id"].to_numpy()),
                                 on="average_id", suffixes=("", "_nuisance"))
    excess = landscape_excess(with_nuisance)
    worst = int(np.argmax(excess.excess))
    classify = json.loads((root / "metrics" / "classify2d.json").read_text())
    stability = cell_stability(root)
    purity = classify.get("shape_purity") or {}
    return {"n_averages": int(len(table)), "n_family": int(len(fam)),
            "best_pc": pc_name, "best_rho": pc_rho, "rho_pc": pc_all,
            "best_spectral": sp_name, "best_rho_spectral": sp_rho,
            "worst_excess": round(float(excess.excess[worst]), 3), "worst_excess_component": f"pc_{worst + 1}",
            "worst_excess_band": [round(float(excess.lower[worst]), 3), round(float(excess.upper[worst]), 3)],
            "purity": purity.get("emc_mean"), "purity_baseline": purity.get("naive_baseline"),
            "reproduced": {c: v.get("reproduced") for c, v in stability.items()},
            "stability": {c: v.get("stability") for c, v in stability.items()},
            "q_max_nm": json.loads((root / "metrics" / "ccmatrix.json").read_text()).get("q_max_nm")}


LANDSCAPE_INPUTS = ("data/frames.h5", "data/truth.h5", "data/averages.h5", "results/frames.parquet",
                    "results/parts/classify2d.parquet", "metrics/classify2d.json")


def parse_sets(sets: list[str]) -> dict:
    """``["ccmatrix.size_normalise=true", ...]`` -> {("ccmatrix", "size_normalise"): True, ...}."""
    out = {}
    for item in sets or []:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or section not in ("classify2d", "ccmatrix", "embed"):
            raise SystemExit(f"landscape_matrix: --set {item!r}: expected classify2d.KEY=VALUE, "
                             "ccmatrix.KEY=VALUE or embed.KEY=VALUE")
        out[(section, name)] = yaml.safe_load(value)
    return out


CLASSIFY_INPUTS = ("data/frames.h5", "data/truth.h5")


def link_inputs(src: Path, dst: Path, rels) -> None:
    """Symlink a finished cell's input files ``rels`` into ``dst`` (not copied)."""
    for rel in rels:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (dst / rel).exists():
            (dst / rel).symlink_to((src / rel).resolve())


def variant_cell(top: Path, name: str, variant: str, sets: dict, stages: dict) -> tuple[Path, dict]:
    """Rerun a finished cell with parameters changed, in ``<cell>@<variant>`` next to it (its
    inputs linked, not copied): ``ccmatrix`` and ``embed`` on the same classifications when only
    landscape settings change, from ``classify2d`` on the same frames when a classify2d setting does."""
    src, dst = top / name, top / f"{name}@{variant}"
    reclassify = any(section == "classify2d" for section, _ in sets)
    link_inputs(src, dst, CLASSIFY_INPUTS if reclassify else LANDSCAPE_INPUTS)
    params = yaml.safe_load((src / "params.yaml").read_text())
    for (section, key), value in sets.items():
        params[section][key] = value
    pfile = dst / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    names = ("classify2d", "ccmatrix", "embed") if reclassify else ("ccmatrix", "embed")
    return dst, {s: round(run_stage(dst, s, stages, pfile), 1) for s in names}


ORACLES = ("counts", "noisefree")


def oracle_cell(top: Path, name: str, mode: str, stages: dict, seed: int = 0) -> tuple[Path, dict]:
    """Rerun ``ccmatrix`` + ``embed`` of a finished cell on its oracle averages
    (:mod:`spicompute.simulation.oracle`: one sharp view of each average's members, at their
    own photons for ``counts``, noise-free for ``noisefree``), in ``<cell>@oracle_<mode>``."""
    from spicompute.io.averages import read_averages, write_averages
    from spicompute.io.truth import read_truth
    from spicompute.simulation.oracle import average_representatives, oracle_averages
    from spicompute.simulation.simulate import SimulationParams, build_detector, make_library

    src, dst = top / name, top / f"{name}@oracle_{mode}"
    link_inputs(src, dst, [rel for rel in LANDSCAPE_INPUTS if rel != "data/averages.h5"])
    params = yaml.safe_load((src / "params.yaml").read_text())
    # the cell's own resolved q range: only the averages differ (the counts rule would read the
    # sharp views' steeper fall-off and the Poisson pixels differently from EMC's smooth averages)
    cell_q = json.loads((src / "metrics" / "ccmatrix.json").read_text())
    params["ccmatrix"].update(q_min_nm=float(cell_q["q_min_nm"]), q_max_nm=float(cell_q["q_max_nm"]))
    sim = SimulationParams.from_dict(params["simulate"])
    library, _, _ = make_library(sim, build_detector(sim, np.random.default_rng(0)))
    t = time.perf_counter()
    reps = average_representatives(pd.read_parquet(src / "results" / "frames.parquet"),
                                    read_truth(src / "data" / "truth.h5"))
    ideal = oracle_averages(read_averages(src / "data" / "averages.h5"), reps, library, counts=mode == "counts",
                            background_flat_fraction=sim.background_flat_fraction,
                            background_q_nm=sim.background_q_nm, rng=np.random.default_rng(seed))
    write_averages(dst / "data" / "averages.h5", ideal, stage="oracle")
    seconds = {"oracle": round(time.perf_counter() - t, 1)}
    pfile = dst / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    seconds.update({s: round(run_stage(dst, s, stages, pfile), 1) for s in ("ccmatrix", "embed")})
    return dst, seconds


def main_(args) -> dict:
    names = args.cells or list(CELLS)
    unknown = [n for n in names if n not in CELLS]
    if unknown:
        raise SystemExit(f"landscape_matrix: unknown cell(s) {', '.join(unknown)} (known: {', '.join(CELLS)})")
    params = {}
    for n in names:  # every cell checked before anything runs
        try:
            params[n] = cell_params(n, args.frames, args.runs, args.seed)
        except ParameterError as exc:
            raise SystemExit(f"landscape_matrix: {exc}") from None
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    top = Path(args.workdir or tempfile.mkdtemp(prefix="landscape-matrix-"))
    results = {}
    out_path = Path(args.out) if args.out else None
    if out_path and out_path.exists() and args.resume:
        results = json.loads(out_path.read_text()).get("cells", {})
    if getattr(args, "oracle", ""):
        for n in names:
            if not (top / n / "data" / "averages.h5").exists():
                print(f"{n}: no finished cell in {top}, skipped", flush=True)
                continue
            root, seconds = oracle_cell(top, n, args.oracle, stages, args.seed)
            results[f"{n}@oracle_{args.oracle}"] = {**score_cell(root), "seconds": seconds,
                                                     "overrides": {**BASE, **CELLS[n]}, "oracle": args.oracle}
            if out_path:
                out_path.write_text(json.dumps(_document(args, results), indent=1) + "\n")
        print(format_table(results))
        return _document(args, results)
    if getattr(args, "variant", ""):
        sets = parse_sets(getattr(args, "set", []))
        if not sets:
            raise SystemExit("landscape_matrix: --variant needs at least one --set ccmatrix.KEY=VALUE")
        for n in names:
            if not (top / n / "data" / "averages.h5").exists():
                print(f"{n}: no finished cell in {top}, skipped", flush=True)
                continue
            root, seconds = variant_cell(top, n, args.variant, sets, stages)
            key = f"{n}@{args.variant}"
            results[key] = {**score_cell(root), "seconds": seconds, "overrides": {**BASE, **CELLS[n]},
                            "landscape_set": {f"{a}.{b}": v for (a, b), v in sets.items()}}
            if out_path:
                out_path.write_text(json.dumps(_document(args, results), indent=1) + "\n")
        print(format_table(results))
        return _document(args, results)
    if args.rescore:
        for n in names:
            if (top / n / "metrics" / "embed.json").exists():
                seconds = results.get(n, {}).get("seconds")
                results[n] = {**score_cell(top / n), "seconds": seconds, "overrides": {**BASE, **CELLS[n]}}
        if out_path:
            out_path.write_text(json.dumps(_document(args, results), indent=1) + "\n")
        print(format_table(results))
        return _document(args, results)
    for n in names:
        if n in results:
            continue
        root = top / n
        root.mkdir(parents=True, exist_ok=True)
        pfile = root / "params.yaml"
        pfile.write_text(yaml.safe_dump(params[n]))
        seconds = {s: round(run_stage(root, s, stages, pfile), 1) for s in ("frames", "classify2d", "ccmatrix", "embed")}
        row = score_cell(root)
        row["seconds"] = seconds
        row["overrides"] = {**BASE, **CELLS[n]}
        results[n] = row
        print(f"{n:24s} best {row['best_pc']} |rho| {row['best_rho']:.3f} (spectral {row['best_rho_spectral']:.3f})  "
              f"worst excess {row['worst_excess']:+.3f} [{row['worst_excess_band'][0]:+.3f}, "
              f"{row['worst_excess_band'][1]:+.3f}]  purity {row['purity']} vs {row['purity_baseline']}  "
              f"reproduced {row['reproduced'].get(row['best_pc'])}  {sum(seconds.values()):.0f} s", flush=True)
        if out_path:
            out_path.write_text(json.dumps(_document(args, results), indent=1) + "\n")
    return _document(args, results)


def format_table(results: dict) -> str:
    """The matrix as a markdown table (docs/low_photon.md)."""
    lines = ["| cell | changed | best pc \\|ρ\\| with melt | spectral | worst nuisance excess [5–95 %] | "
             "purity (baseline) | best pc reproduced | s |", "|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        n = key.split("@")[0]
        changed = ", ".join(f"{k} {v}" for k, v in CELLS[n].items() if k != "fractions") or "—"
        if "fractions" in CELLS[n]:
            con = sum(CELLS[n]["fractions"][k] for k in ("dimer", "rod", "aggregate"))
            changed = (changed + f", contaminants {con:.0%}").lstrip("—, ")
        stab = (r.get("stability") or {}).get(r["best_pc"])
        rep = (r.get("reproduced") or {}).get(r["best_pc"])
        secs = sum((r.get("seconds") or {}).values()) if r.get("seconds") else None
        lines.append(f"| {key} | {changed} | {r['best_pc']} {r['best_rho']:.2f} | {r['best_rho_spectral']:.2f} | "
                     f"{r['worst_excess']:+.2f} [{r['worst_excess_band'][0]:+.2f}, {r['worst_excess_band'][1]:+.2f}] | "
                     f"{r['purity']:.2f} ({r['purity_baseline']:.2f}) | {'yes' if rep else 'no'} ({stab:.2f}) | "
                     f"{'' if secs is None else f'{secs:.0f}'} |")
    return "\n".join(lines)


def _document(args, results: dict) -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "settings": {"frames": args.frames, "runs": args.runs, "seed": args.seed, "base": BASE},
            "cells": results}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="*", default=None, help=f"cells to run (default all: {', '.join(CELLS)})")
    ap.add_argument("--frames", type=int, default=6000)
    ap.add_argument("--runs", type=int, default=4, help="classify2d.n_runs (>= 2: the stability halves)")
    ap.add_argument("--seed", type=int, default=0, help="simulate.seed")
    ap.add_argument("--workdir", default="", help="keep the cells' folders here")
    ap.add_argument("--out", default="", help="write the table as JSON (rewritten after every cell)")
    ap.add_argument("--resume", action="store_true", help="skip cells already in --out")
    ap.add_argument("--variant", default="",
                    help="rerun ccmatrix + embed of the finished cells in --workdir with --set changes, "
                         "into <cell>@<variant> (for example --variant sizenorm --set ccmatrix.size_normalise=true)")
    ap.add_argument("--set", action="append", default=[],
                    help="classify2d.KEY=VALUE (reruns from classify2d), ccmatrix.KEY=VALUE or embed.KEY=VALUE (with --variant)")
    ap.add_argument("--oracle", default="", choices=("",) + ORACLES,
                    help="rerun ccmatrix + embed of the finished cells in --workdir on oracle averages "
                         "(one sharp view per average at its members' photons: counts; or noise-free), "
                         "into <cell>@oracle_<mode> at the cell's own q range: the bound on what any classification "
                         "could give")
    ap.add_argument("--rescore", action="store_true",
                    help="only recompute the scores of the cells' finished folders in --workdir (no runs)")
    main_(ap.parse_args())
