"""Peer benchmark: Dragonfly (PyPI ``dragonfly-spi``) against spicompute, same file, same run.

1. Dragonfly's simulator makes the photon file (its ``sim_setup``, 4BED, as in
   ``shared/interop/dragonfly/config2d.ini``; default 30,000 frames of 150 x 150,
   pixsize 0.512) once into ``--work-dir`` (reused when present).
2. Alternating runs (Dragonfly, ours, Dragonfly, ours, ... ``--repeats`` pairs) of a whole
   ``--iterations`` 2D EMC with the same K, R and threads; the 1-minute load average is
   recorded before each run; per-iteration seconds come from Dragonfly's log and from
   our ``run_emc`` records.  Ours reads the same photons + detector through
   ``spicompute.io.dragonfly.read_dragonfly_photons`` (the frames stage's Dragonfly reader).
3. Dragonfly's ``calc_cc`` against our common-line CC matrix on the same class averages
   (Dragonfly's final models), alternating, same number of lines and radii.
4. JSON + markdown table of ratios (Dragonfly seconds / ours: > 1 means ours is faster)
   in ``--out-dir``.

The peer is built by ``setup_dragonfly.sh``.  When it is absent or fails, this script says
why and exits with status 3; no ratio is ever formed from a remembered number.

    python benchmarks/peers/bench_peers.py --frames 2000 --iterations 3     # smoke test
    python benchmarks/peers/bench_peers.py                                 # full size
    python benchmarks/peers/bench_peers.py --ours-repo /work/wt-classify2d # another checkout
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DRAGONFLY_INI = """[parameters]
detd = 300
lambda = 6.2
detsize = {detsize}
pixsize = {pixsize}
stoprad = 10
polarization = x

[make_densities]
pdb_code = 4BED
scatt_dir = aux/
out_density_file = data/densityMap.bin

[make_intensities]
in_density_file = make_densities:::out_density_file
out_intensity_file = data/intensities.bin

[make_detector]
out_detector_file = data/det_sim.h5

[make_data]
num_data = {frames}
fluence = 1e11
in_detector_file = make_detector:::out_detector_file
in_intensity_file = make_intensities:::out_intensity_file
out_photons_file = data/photons.emc

[emc]
in_photons_file = make_data:::out_photons_file
in_detector_file = make_detector:::out_detector_file
output_folder = {output}/
log_file = {log}
need_scaling = 1
beta_factor = 1.0
beta_schedule = 2.0 10
recon_type = 2d
num_modes = {models}
num_rot = {rotations}
friedel_sym = 1
"""
WAVELENGTH_NM = 0.62   # lambda = 6.2 Angstrom above


class PeerUnavailable(RuntimeError):
    """Dragonfly cannot be run here (reason in the message)."""


def run(cmd, cwd=None, env=None, timeout=None) -> tuple[float, str]:
    """Run ``cmd``; return (wall seconds, stdout).  Raises on failure with its stderr tail."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    sec = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: "
                           f"{(p.stderr or p.stdout)[-800:]}")
    return sec, p.stdout


def peer_bin(venv: Path, name: str) -> Path:
    exe = venv / "bin" / name
    if not exe.exists():
        raise PeerUnavailable(f"{exe} missing: run benchmarks/peers/setup_dragonfly.sh "
                              "(needs Debian libhdf5-dev libgsl-dev libopenmpi-dev openmpi-bin)")
    return exe


def simulate(venv: Path, work: Path, args) -> Path:
    """Dragonfly's own simulated data set in ``work`` (made once); returns the folder."""
    sim = work / f"sim_{args.frames}_{args.detsize}"
    if (sim / "data" / "photons.emc").exists() and (sim / "sim.done").exists():
        return sim
    (sim / "data").mkdir(parents=True, exist_ok=True)
    (sim / "logs").mkdir(exist_ok=True)
    _, out = run([str(venv / "bin" / "python"), "-c",
                  "import dragonfly, os; print(os.path.dirname(dragonfly.__file__))"])
    aux = Path(out.strip()) / "aux"
    if not (sim / "aux").exists():
        shutil.copytree(aux, sim / "aux")
    write_config(sim / "config.ini", args, "unused", "logs/unused.log")
    print(f"simulating {args.frames} frames with Dragonfly's sim_setup in {sim} ...", flush=True)
    sec, _ = run([str(peer_bin(venv, "dragonfly.utils.sim_setup")), "-c", "config.ini", "-y"],
                 cwd=sim)
    (sim / "sim.done").write_text(f"{sec:.1f} s\n")
    return sim


def write_config(path: Path, args, output: str, log: str) -> None:
    path.write_text(DRAGONFLY_INI.format(detsize=args.detsize, pixsize=args.pixsize,
                                         frames=args.frames, models=args.models,
                                         rotations=args.rotations, output=output, log=log))


def parse_dragonfly_log(text: str) -> list[dict]:
    """Rows of the iteration table of Dragonfly's EMC log (time, log-likelihood, ...)."""
    rows, on = [], False
    for line in text.splitlines():
        if line.startswith("Iter\ttime"):
            on = True
            continue
        if on:
            f = line.split()
            if len(f) >= 7 and f[0].isdigit():
                rows.append({"iteration": int(f[0]), "seconds": float(f[1]),
                             "rms_change": float(f[2]), "info_rate": float(f[3]),
                             "loglik": float(f[4]), "num_rot": int(f[5]), "beta": float(f[6])})
    return rows


def run_dragonfly(venv: Path, sim: Path, args, tag: str) -> dict:
    out = f"run_{tag}"
    log = f"logs/{out}.log"
    shutil.rmtree(sim / out, ignore_errors=True)
    (sim / out).mkdir()
    (sim / log).unlink(missing_ok=True)
    write_config(sim / f"{out}.ini", args, out, log)
    load = os.getloadavg()[0]
    wall, _ = run([str(peer_bin(venv, "dragonfly.emc")), str(args.iterations), "-c",
                   f"{out}.ini", "-t", str(args.threads)], cwd=sim)
    rows = parse_dragonfly_log((sim / log).read_text())
    if len(rows) != args.iterations:
        raise RuntimeError(f"{sim / log}: {len(rows)} iteration rows, expected {args.iterations}")
    final = sim / out / f"output_{args.iterations:03d}.h5"
    return {"tool": "dragonfly", "load_avg_1min_before": load, "wall_s": wall,
            "seconds_per_iteration": [r["seconds"] for r in rows],
            "loglik_per_frame": [r["loglik"] for r in rows], "beta": [r["beta"] for r in rows],
            "final_output": str(final)}


def ours_env(ours_repo: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ours_repo), SPICOMPUTE_NO_PROGRESS="1",
               DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="", MKL_NUM_THREADS="")
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(k)
    return env


def run_ours(py: str, ours_repo: Path, sim: Path, args, tag: str) -> dict:
    load = os.getloadavg()[0]
    wall, out = run([py, str(HERE / "_ours_emc.py"), str(sim / "data" / "photons.emc"),
                     str(sim / "data" / "det_sim.h5"), str(WAVELENGTH_NM), str(args.models),
                     str(args.rotations), str(args.iterations), str(args.threads),
                     str(sim / f"ours_{tag}.npz")], env=ours_env(ours_repo))
    rec = json.loads(out.strip().splitlines()[-1])
    rec.update(tool="spicompute", load_avg_1min_before=load, wall_s=wall,
               ours_repo=str(ours_repo), ours_commit=git_commit(ours_repo))
    return rec


def git_commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def time_cc(venv: Path, py: str, ours_repo: Path, averages: str, args) -> list[dict]:
    """Alternating Dragonfly calc_cc / our CC matrix on the same averages file."""
    out = []
    for rep in range(args.repeats):
        copy = Path(averages).with_name(f"cc_dragonfly_{rep}.h5")
        load = os.getloadavg()[0]
        wall, _ = run([str(venv / "bin" / "python"), "-m", "dragonfly.utils.py_src.calc_cc",
                       averages, "-n", str(args.cc_lines), "-m", str(args.cc_mask_radius),
                       "-p", str(args.threads), "-o", str(copy)])
        # the same process doing only its imports and reading the file: start-up overhead
        base, _ = run([str(venv / "bin" / "python"), "-c",
                       "import sys, h5py; from dragonfly.utils.py_src import calc_cc; "
                       "h5py.File(sys.argv[1], 'r')['intens'][:]", averages])
        out.append({"tool": "dragonfly calc_cc", "load_avg_1min_before": load,
                    "seconds_total": wall, "startup_and_read_s": base,
                    "seconds_compute": wall - base})
        load = os.getloadavg()[0]
        wall, o = run([py, str(HERE / "_ours_cc.py"), averages, str(args.cc_lines),
                       str(args.cc_mask_radius), str(args.threads)], env=ours_env(ours_repo))
        rec = json.loads(o.strip().splitlines()[-1])
        rec.update(tool="spicompute ccmatrix", load_avg_1min_before=load, process_wall_s=wall)
        out.append(rec)
    return out


def score_identically(py: str, sim: Path, runs: list[dict], n_frames: int) -> dict:
    """Both tools' final models of the first pair scored by ``_score.py`` (same frames)."""
    d = next(r for r in runs if r["tool"] == "dragonfly")
    o = next(r for r in runs if r["tool"] == "spicompute")
    _, out = run([py, str(HERE / "_score.py"), str(sim / "data" / "photons.emc"),
                  str(sim / "data" / "det_sim.h5"), str(n_frames),
                  f"dragonfly={d['final_output']}", f"spicompute={o['models_file']}"])
    return json.loads(out.strip().splitlines()[-1])


def summarise(runs: list[dict], cc: list[dict], n_iter: int) -> dict:
    """Median-over-repeats sums of per-iteration seconds in windows, and ratios."""
    def window(tool, lo, hi):
        vals = [sum(r["seconds_per_iteration"][lo:hi]) for r in runs if r["tool"] == tool]
        return float(np.median(vals)) if vals else float("nan")

    wins = {"iterations 1-2": (0, 2), f"iterations 6-{n_iter}": (5, n_iter),
            "whole run": (0, n_iter)}
    rows = {}
    for name, (lo, hi) in wins.items():
        if hi <= lo or hi > n_iter:
            continue
        d, o = window("dragonfly", lo, hi), window("spicompute", lo, hi)
        rows[name] = {"dragonfly_s": d, "ours_s": o, "ratio_dragonfly_over_ours": d / o}
    d = float(np.median([c["seconds_total"] for c in cc if c["tool"].startswith("dragonfly")]))
    # whole processes on both sides (start-up, reading the file, lines, CC): like for like
    o = float(np.median([c["process_wall_s"] for c in cc if c["tool"].startswith("spicompute")]))
    rows["calc_cc vs ccmatrix (process wall)"] = {"dragonfly_s": d, "ours_s": o, "ratio_dragonfly_over_ours": d / o}
    # compute only: Dragonfly's wall less its measured start-up + read; ours lines + CC timed inside
    d = float(np.median([c["seconds_compute"] for c in cc if c["tool"].startswith("dragonfly")]))
    o = float(np.median([c["seconds_total"] for c in cc if c["tool"].startswith("spicompute")]))
    rows["calc_cc vs ccmatrix (compute)"] = {"dragonfly_s": d, "ours_s": o, "ratio_dragonfly_over_ours": d / o}
    return rows


def markdown(result: dict) -> str:
    a = result["args"]
    loads = ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["emc_runs"])
    lines = [f"# Peer benchmark: Dragonfly {result['dragonfly_version']} vs spicompute "
             f"({result['ours_commit']})", "",
             f"{result['date_utc']} on {result['machine']} ({result['cpu_count']} CPUs, shared); "
             f"{a['frames']} frames {a['detsize']}x{a['detsize']}, K {a['models']}, "
             f"R {a['rotations']}, {a['iterations']} iterations, {a['threads']} threads, "
             f"{a['repeats']} alternating pair(s); 1-min load before runs: {loads}.", "",
             "| measure | Dragonfly s | spicompute s | Dragonfly / ours |", "|---|---|---|---|"]
    for name, r in result["summary"].items():
        lines.append(f"| {name} | {r['dragonfly_s']:.2f} | {r['ours_s']:.2f} | "
                     f"{r['ratio_dragonfly_over_ours']:.2f}x |")
    for name, summ in result.get("extra_summaries", {}).items():
        lines += ["", f"Ours from {name}, run on the same file after the pair (not alternated; "
                  "load before: "
                  + ", ".join(f"{r['load_avg_1min_before']:.2f}" for r in result["extra_ours_runs"]
                              if name.endswith(f"({r['ours_commit']})")) + "):", "",
                  "| measure | Dragonfly s | spicompute s | Dragonfly / ours |", "|---|---|---|---|"]
        for key, r in summ.items():
            if key.startswith("calc_cc"):
                continue
            lines.append(f"| {key} | {r['dragonfly_s']:.2f} | {r['ours_s']:.2f} | "
                         f"{r['ratio_dragonfly_over_ours']:.2f}x |")
    sc = result.get("identical_score")
    if sc:
        lines += ["", f"Final models scored identically (`_score.py`: Poisson log-likelihood per "
                  f"frame on {sc['frames_scored']} frames, {sc['n_rot']} rotations over 2 pi, "
                  "ML scale per frame and orientation, `best` = most likely class and "
                  "rotation, `marginal` = uniform-prior mean):", "",
                  "| tool | best | marginal |", "|---|---|---|"]
        for tool in [k for k in sc if isinstance(sc[k], dict)]:
            lines.append(f"| {tool} | {sc[tool]['best']:.2f} | {sc[tool]['marginal']:.2f} |")
    lines += ["", "Final log-likelihood per frame in each tool's own log "
              "(not comparable with each other: different definitions and beta):"]
    for r in result["emc_runs"]:
        lines.append(f"- {r['tool']}: {r['loglik_per_frame'][-1]:.2f}")
    lines.append("")
    lines.append("Per-iteration seconds:")
    for r in result["emc_runs"] + result.get("extra_ours_runs", []):
        lines.append(f"- {r['tool']} {r.get('ours_commit', '')}: "
                     + " ".join(f"{s:.2f}" for s in r["seconds_per_iteration"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=30000)
    ap.add_argument("--detsize", type=int, default=150)
    ap.add_argument("--pixsize", type=float, default=0.512)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--rotations", type=int, default=36)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="alternating (Dragonfly, ours) pairs")
    ap.add_argument("--cc-lines", type=int, default=40, help="lines over pi for both CC tools")
    ap.add_argument("--cc-mask-radius", type=int, default=20,
                    help="inner radius ignored by both CC tools (grid steps)")
    ap.add_argument("--ours-repo", default=str(REPO), help="checkout of spicompute to time")
    ap.add_argument("--ours-python", default=sys.executable,
                    help="Python with spicompute's dependencies (default: this one)")
    ap.add_argument("--dragonfly-venv", default=str(HERE / ".venv-dragonfly"))
    ap.add_argument("--work-dir", default=str(HERE / "work"))
    ap.add_argument("--out-dir", default=str(HERE / "results"))
    ap.add_argument("--name", default=None, help="results file stem (default from sizes)")
    ap.add_argument("--score-frames", type=int, default=5000,
                    help="frames on which both final model sets are scored identically (0: skip)")
    ap.add_argument("--post", metavar="RESULT_JSON",
                    help="on an earlier result file: re-time calc_cc vs ccmatrix (alternating, "
                         "same averages) and score both final model sets identically")
    ap.add_argument("--add-ours", metavar="RESULT_JSON",
                    help="on an earlier result file: run only our EMC from --ours-repo on the "
                         "same file (after, not alternated) and add its ratios against that "
                         "result's Dragonfly run")
    args = ap.parse_args(argv)
    if args.add_ours:
        path = Path(args.add_ours)
        result = json.loads(path.read_text())
        a = argparse.Namespace(**{**result["args"], "threads": result["args"]["threads"]})
        sim = Path(result["emc_runs"][0]["final_output"]).parents[1]
        ours_repo = Path(args.ours_repo)
        rec = run_ours(args.ours_python, ours_repo, sim, a, f"extra_{git_commit(ours_repo)}")
        rec["note"] = "run after the alternated pair, not alternated"
        dfly = [r for r in result["emc_runs"] if r["tool"] == "dragonfly"]
        result.setdefault("extra_ours_runs", []).append(rec)
        result.setdefault("extra_summaries", {})[f"{ours_repo} ({rec['ours_commit']})"] = \
            summarise(dfly + [rec], result["cc_runs"], a.iterations)
        if rec.get("models_file") and args.score_frames:
            base = next(r for r in result["emc_runs"] if r["tool"] == "spicompute")
            _, out = run([args.ours_python, str(HERE / "_score.py"),
                          str(sim / "data" / "photons.emc"), str(sim / "data" / "det_sim.h5"),
                          str(args.score_frames), f"dragonfly={dfly[0]['final_output']}",
                          f"spicompute={base['models_file']}",
                          f"spicompute_{rec['ours_commit']}={rec['models_file']}"])
            result["identical_score"] = json.loads(out.strip().splitlines()[-1])
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return 0
    if args.post:
        path = Path(args.post)
        result = json.loads(path.read_text())
        runs = result["emc_runs"]
        sim = Path(runs[0]["final_output"]).parents[1]
        ours_repo = Path(result["ours_repo"])
        result["cc_runs"] = time_cc(Path(args.dragonfly_venv), args.ours_python, ours_repo,
                                    runs[0]["final_output"], args)
        result["summary"] = summarise(runs, result["cc_runs"], result["args"]["iterations"])
        result["identical_score"] = score_identically(args.ours_python, sim, runs,
                                                      args.score_frames)
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return 0
    venv, work, ours_repo = Path(args.dragonfly_venv), Path(args.work_dir), Path(args.ours_repo)
    if not (ours_repo / "spicompute" / "__init__.py").exists():
        ap.error(f"--ours-repo {ours_repo}: no spicompute/ package there")
    try:
        peer_bin(venv, "dragonfly.emc")
        _, version = run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('dragonfly-spi'))"])
        sim = simulate(venv, work, args)
        runs = []
        for rep in range(args.repeats):
            print(f"pair {rep + 1}/{args.repeats}: Dragonfly EMC ...", flush=True)
            runs.append(run_dragonfly(venv, sim, args, f"{rep}"))
            print(f"  {sum(runs[-1]['seconds_per_iteration']):.1f} s; spicompute EMC ...", flush=True)
            runs.append(run_ours(args.ours_python, ours_repo, sim, args, f"{rep}"))
            print(f"  {sum(runs[-1]['seconds_per_iteration']):.1f} s", flush=True)
        print("common-line CC on Dragonfly's final models ...", flush=True)
        cc = time_cc(venv, args.ours_python, ours_repo, runs[0]["final_output"], args)
        score = (score_identically(args.ours_python, sim, runs, min(args.score_frames, args.frames))
                 if args.score_frames else None)
    except (PeerUnavailable, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"bench_peers: peer comparison not possible: {exc}", file=sys.stderr)
        return 3
    result = {"date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": platform.node() + " " + platform.machine(),
              "cpu_count": os.cpu_count(), "dragonfly_version": version.strip(),
              "ours_repo": str(ours_repo), "ours_commit": git_commit(ours_repo),
              "args": vars(args), "emc_runs": runs, "cc_runs": cc,
              "summary": summarise(runs, cc, args.iterations), "identical_score": score}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or f"peers_{args.frames}f_{args.iterations}it_{result['ours_commit']}"
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out / f"{stem}.json")
    md = markdown(result)
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
