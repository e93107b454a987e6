"""The paper's Fig. 5 against the truth: the default pipeline on a simulated set, validated.

Runs every stage of dvc.yaml (frames .. validate) in a work folder with the
default parameters, optionally changing the simulated photon level and seed,
and prints what ``spicompute validate`` measured (:mod:`spicompute.validation`):

* Spearman(z, t_hat) along the 12-point line and t_hat at both ends;
* |Spearman|(z_1, members' mean melt) over the trained family averages;
* the training set's family purity and recall;
* per line point the phased particle volume next to the true V(t_hat), and
  how many phased volumes converged.

    PYTHONPATH=. python benchmarks/volumes_truth.py                        # default set, seed 0
    PYTHONPATH=. python benchmarks/volumes_truth.py --photons 400 --background 50 --seed 1
    PYTHONPATH=. python benchmarks/volumes_truth.py --workdir D --from select   # rerun from a stage
    PYTHONPATH=. python benchmarks/volumes_truth.py --workdir D --to orient     # only the upstream half
    PYTHONPATH=. python benchmarks/volumes_truth.py --workdir D --from vae --set vae.class_blur_deg=auto --label blurauto

Results (JSON, with the date, machine load and commit) go to
``benchmarks/measured/volumes_truth_<label>.json`` with ``--save``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("frames", "classify2d", "ccmatrix", "embed", "regress", "orient", "select", "vae", "volumes",
          "phase", "validate")


def run_stage(root: Path, name: str, stages: dict, params: Path) -> float:
    from spicompute.cli import main

    argv = stages[name]["cmd"].split()[1:]
    outputs = ("data/", "results/", "metrics/", "models/", "dvclive/", "checkpoints/")
    argv = [str(root / a) if a.startswith(outputs) else a for a in argv]
    argv = [str(params) if a == "params.yaml" else a for a in argv]
    t0 = time.perf_counter()
    if main(argv + ["-q"]) != 0:
        raise SystemExit(f"stage {name} failed")
    return time.perf_counter() - t0


def summary(root: Path) -> dict:
    m = json.loads((root / "metrics" / "validate.json").read_text())
    table = pd.read_parquet(root / "results" / "volumes_truth.parquet")
    line = table[table["source"] == "line"].sort_values("z_1")
    m["points"] = [{"z_1": round(float(r.z_1), 3), "t_hat": round(float(r.t_hat), 3),
                    "match_cc": round(float(r.match_cc), 3),
                    "truth_cc_to_cube": round(float(r.truth_cc_to_cube), 4),
                    "truth_cc_to_sphere": round(float(r.truth_cc_to_sphere), 4),
                    "particle_volume_nm3": round(float(r.particle_volume_nm3)),
                    "true_volume_nm3": round(float(r.true_volume_nm3)),
                    "converged": bool(getattr(r, "converged", True))} for r in line.itertuples()]
    return m


def main_(args) -> dict:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="volumes-truth-"))
    root.mkdir(parents=True, exist_ok=True)
    pfile = root / "params.yaml"
    if args.start == "frames" or not pfile.exists():
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["simulate"]["seed"] = args.seed
        if args.photons is not None:
            params["simulate"]["photons_mean"] = args.photons
        if args.background is not None:
            params["simulate"]["background_photons"] = args.background
        pfile.write_text(yaml.safe_dump(params))
    if args.set:   # a variant: SECTION.KEY=VALUE (YAML value) into the folder's params.yaml
        params = yaml.safe_load(pfile.read_text())
        for item in args.set:
            key, _, value = item.partition("=")
            section, _, name = key.partition(".")
            if not name or section not in params:
                raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE with a section of params.yaml")
            params[section][name] = yaml.safe_load(value)
        pfile.write_text(yaml.safe_dump(params))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    seconds = {}
    for name in STAGES[STAGES.index(args.start):STAGES.index(args.stop) + 1]:
        if name == "vae":
            import shutil

            shutil.rmtree(root / "checkpoints" / "vae", ignore_errors=True)
        seconds[name] = round(run_stage(root, name, stages, pfile), 1)
        print(f"{name}: {seconds[name]} s", flush=True)
    if args.stop != "validate":
        return {"seconds": seconds}
    out = summary(root)
    settings = yaml.safe_load(pfile.read_text())["simulate"]
    out["settings"] = {"photons_mean": settings["photons_mean"],
                       "background_photons": settings["background_photons"], "seed": settings["seed"],
                       "n_frames": settings["n_frames"]}
    out["seconds"] = seconds
    out["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                   text=True).stdout.strip()
    print(json.dumps({k: v for k, v in out.items() if k != "points"}, indent=1))
    for p in out["points"]:
        print(p)
    if args.save:
        label = f"p{int(settings['photons_mean'])}_b{int(settings['background_photons'])}_s{settings['seed']}"
        label += f"_{args.label}" if args.label else ""
        out["set"] = list(args.set or [])
        dest = REPO / "benchmarks" / "measured" / f"volumes_truth_{label}.json"
        dest.write_text(json.dumps(out, indent=1) + "\n")
        print("->", dest)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photons", type=float, default=None, help="simulate.photons_mean (default: params.yaml)")
    ap.add_argument("--background", type=float, default=None, help="simulate.background_photons")
    ap.add_argument("--seed", type=int, default=0, help="simulate.seed")
    ap.add_argument("--workdir", default="", help="work folder (default: a new temporary one)")
    ap.add_argument("--from", dest="start", default="frames", choices=STAGES,
                    help="first stage to run (the folder must hold the earlier outputs)")
    ap.add_argument("--to", dest="stop", default="validate", choices=STAGES, help="last stage to run")
    ap.add_argument("--save", action="store_true", help="write benchmarks/measured/volumes_truth_<label>.json")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change a parameter in the folder's params.yaml (repeatable), e.g. vae.class_blur_deg=auto")
    ap.add_argument("--label", default="", help="suffix of the saved JSON's name (a variant)")
    main_(ap.parse_args())
