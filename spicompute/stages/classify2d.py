"""2D EMC classification with bootstrapping: frames -> B x K class averages.

Reads the frames file, runs ``n_runs`` bootstrap runs of 2D EMC (``n_models``
models x ``n_rot`` in-plane rotations, each run on a seeded random
``subset_fraction`` of the frames) and writes

* the averages file (all B*K models, ``average_id = run * K + model``),
* ``results/frames.parquet``: one row per (frame_id, run),
* ``results/parts/classify2d.parquet``: ``average_id, run, model, n_frames``,
* metrics JSON and per-iteration dvclive logs,
* a resumable checkpoint per run (an interrupted stage resumes).

See docs/classify2d.md.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spicompute.io.averages import AverageSet, write_averages
from spicompute.io.frames import read_frames
from spicompute.io.provenance import write_json_atomic
from spicompute.io.tables import write_table
from spicompute.stages._common import stage_params

COMMAND = "classify2d"
OUTPUTS = ("out", "frames_table", "part", "checkpoints", "metrics", "live")   # --truth is an input here
HELP = "2D EMC class averages (B bootstrap runs x K models) from the frames"

log = logging.getLogger("spicompute.classify2d")

LIVE_METRICS = ("loglik", "mutual_info", "model_change", "beta_mean", "occupancy_min",
                "occupancy_median", "occupancy_max", "empty_models", "posterior_max_mean",
                "e_step_share")


def add_arguments(parser) -> None:
    parser.add_argument("--frames", default="data/frames.h5", help="frames file (input)")
    parser.add_argument("--out", default="data/averages.h5", help="averages file (output)")
    parser.add_argument("--frames-table", default="results/frames.parquet",
                        help="per-frame assignments table (output)")
    parser.add_argument("--part", default="results/parts/classify2d.parquet",
                        help="per-average part table (output)")
    parser.add_argument("--checkpoints", default="checkpoints/classify2d",
                        help="folder of per-run checkpoints (resumed from when present)")
    parser.add_argument("--metrics", default="metrics/classify2d.json", help="metrics JSON")
    parser.add_argument("--truth", default="", help="simulation truth (data/truth.h5): report the classes' "
                        "shape purity against a naive radial-profile clustering ('' or no truth: skip)")
    parser.add_argument("--live", default="dvclive/classify2d",
                        help="dvclive folder for per-iteration metrics ('' to skip)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore and remove existing checkpoints")


class _LiveLogger:
    """Per-iteration metrics into a dvclive folder (``run_<b>/<metric>`` series)."""

    def __init__(self, folder: str):
        self.live = None
        if folder:
            from dvclive import Live

            shutil.rmtree(folder, ignore_errors=True)  # replayed fully from checkpoints
            self.live = Live(dir=folder, save_dvc_exp=False, dvcyaml=False, resume=False)

    def __call__(self, rec: dict) -> None:
        if self.live is None:
            return
        self.live.step = int(rec["iteration"])
        for name in LIVE_METRICS:
            self.live.log_metric(f"run_{rec['run']}/{name}", float(rec[name]))
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.make_summary()


def frames_table(result, frame_id: np.ndarray, n_models: int) -> pd.DataFrame:
    """One row per (frame_id, run); excluded frames once with run = average_id = -1."""
    parts = []
    for run, fr in enumerate(result.frames):
        parts.append(pd.DataFrame({
            "frame_id": frame_id[fr["index"]],
            "run": np.full(fr["index"].size, run, np.int64),
            "average_id": run * n_models + fr["model"].astype(np.int64),
            "rotation_deg": fr["rotation_deg"].astype(np.float64),
            "posterior_max": fr["posterior_max"],
            "scale": fr["scale"],
        }))
    if result.excluded.size:
        m = result.excluded.size
        parts.append(pd.DataFrame({
            "frame_id": frame_id[result.excluded], "run": np.full(m, -1, np.int64),
            "average_id": np.full(m, -1, np.int64), "rotation_deg": np.full(m, np.nan),
            "posterior_max": np.full(m, np.nan), "scale": np.full(m, np.nan)}))
    return pd.concat(parts, ignore_index=True)


def read_truth_or_none(truth_path: str) -> dict | None:
    """The simulation truth, or None (logged) when the file holds none (ingested data)."""
    from spicompute.errors import InputError
    from spicompute.io.truth import read_truth

    try:
        return read_truth(truth_path)
    except InputError as exc:
        log.info("no truth-based class metrics: %s", exc)
        return None


def run(args) -> int:
    from spicompute.emc2d.run import EMCConfig, run_bootstrap, use_stream
    from spicompute.emc2d.sorting import mean_or_none, photon_sorting, purity_against_baseline, truth_sorting
    from spicompute.execution import dask_client  # torch: not at CLI start

    params = stage_params(args, "classify2d")
    cfg = EMCConfig.from_params(params)
    from spicompute.io.stream import FrameFile

    frames = FrameFile(args.frames)   # metadata only; the counts stay on disk when streaming
    streamed = use_stream(cfg, frames.n_frames)
    if not streamed:
        frames.close()
        frames = read_frames(args.frames)
    log.info("classify2d: %d frames, %d pixels; %d runs x %s models x %s rotations%s",
             frames.n_frames, frames.n_pixels, cfg.n_runs, cfg.n_models, cfg.n_rot,
             "; frames streamed from the file" if streamed else "")
    if args.fresh and args.checkpoints:
        shutil.rmtree(args.checkpoints, ignore_errors=True)
    if args.checkpoints:
        Path(args.checkpoints).mkdir(parents=True, exist_ok=True)
    live = _LiveLogger(args.live)
    t0 = time.perf_counter()
    try:
        with dask_client(cfg.scheduler, "classify2d.scheduler") as client:
            result = run_bootstrap(frames, cfg, client=client,
                                   checkpoint_dir=args.checkpoints or None, on_iteration=live)
    finally:
        live.close()
    elapsed = time.perf_counter() - t0
    B, K = cfg.n_runs, result.models.shape[1]   # n_models may be auto
    L = result.grid.size
    run_idx = np.repeat(np.arange(B), K)
    model_idx = np.tile(np.arange(K), B)
    averages = AverageSet(
        intensity=result.models.reshape(B * K, L, L),
        weight=result.weight.reshape(B * K, L, L),
        average_id=run_idx * K + model_idx, run=run_idx, model=model_idx,
        n_frames=result.occupancy.reshape(-1), dq_nm=result.grid.dq_nm,
        wavelength_nm=frames.detector.wavelength_nm, source="spicompute")
    write_averages(args.out, averages, stage=COMMAND, params=params)
    write_table(args.frames_table, frames_table(result, frames.frame_id, K), stage=COMMAND)
    write_table(args.part, pd.DataFrame({"average_id": averages.average_id, "run": run_idx,
                                         "model": model_idx, "n_frames": averages.n_frames}),
                stage=COMMAND)
    runs = []
    photons = frames.photons_per_frame()
    for b, hist in enumerate(result.histories):
        last = hist[-1] if hist else {}
        runs.append({"run": b, "iterations": len(hist),
                     "loglik": last.get("loglik"), "mutual_info": last.get("mutual_info"),
                     "model_change": last.get("model_change"),
                     "empty_models": last.get("empty_models"),
                     "background_refined": next((h["background_refined"] for h in hist
                                                 if "background_refined" in h), None),
                     "photon_sorting_f": photon_sorting(photons[result.frames[b]["index"]],
                                                        result.frames[b]["model"]),
                     "seconds_per_iteration": float(np.mean([h["seconds"] for h in hist]))
                     if hist else None})
    metrics = {
        "n_frames": frames.n_frames, "n_excluded_frames": int(result.excluded.size),
        "n_averages": int(B * K), "grid_size": int(L), "grid_step_nm": result.grid.dq_nm,
        "n_pixels_used": result.grid.n_pix, "seconds": elapsed,
        "loglik_mean": float(np.mean([r["loglik"] for r in runs if r["loglik"] is not None])),
        "mutual_info_mean": float(np.mean([r["mutual_info"] for r in runs
                                           if r["mutual_info"] is not None])),
        "photon_sorting_f": mean_or_none([r["photon_sorting_f"] for r in runs]),
        "runs": runs,
        # the background the runs refined within their classes (mean over runs; None: not refined)
        "background_refined_photons_per_frame": mean_or_none([r["background_refined"] for r in runs]),
        **{f"resolved_{k}": v for k, v in result.resolved.items()},
    }
    metrics["streamed"] = bool(streamed)
    if args.truth and streamed:
        log.info("shape purity not computed: the frames were streamed (the baseline needs them in memory)")
    elif args.truth and (truth := read_truth_or_none(args.truth)) is not None:
        metrics["shape_purity"] = purity_against_baseline(truth, frames, result, K, cfg.seed)
        per_run = [truth_sorting(truth, frames.frame_id[fr["index"]], fr["model"]) for fr in result.frames]
        metrics["truth_sorting_f"] = {key: mean_or_none([r[key] for r in per_run]) for key in per_run[0]}
    write_json_atomic(args.metrics, metrics)
    log.info("classify2d: wrote %d averages (%dx%d grid) to %s in %.1f s", B * K, L, L,
             args.out, elapsed)
    return 0
