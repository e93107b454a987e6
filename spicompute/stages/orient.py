"""orient: best orientation, best CC and gain of every average vs a reference.

The reference is the ideal cube in closed form (``orient.reference: cube``,
edge ``orient.edge_nm``) or an intensity volume from an HDF5 file
(``volumes`` (V, L, L, L) or ``volume`` (L, L, L) with a ``dq_nm``
attribute).  Orientations: Dragonfly-style 600-cell sampling at
``orient.num_div`` reduced to the cube's fundamental zone (16,407 at n=20).
Details and file formats: docs/regress_orient.md.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import add_inputs, add_outputs, get_logger, progress_disabled, stage_params

COMMAND = "orient"
HELP = "fit every average's orientation against a cube (or volume) reference; gain = best/mean CC"

log = get_logger("orient")


def add_arguments(parser):
    add_inputs(parser, "averages")
    add_outputs(parser, COMMAND, "results/parts/orient.parquet", "per-average table")
    parser.add_argument("--h5", default="data/orient.h5", help="best-fit slices, orientation set, CC stats")


def _options(p: dict) -> dict:
    from spicompute.execution import validate_scheduler
    from spicompute.orient.fit import NORMALISATIONS
    from spicompute.params import boolean, choice, integer, positive, with_defaults
    from spicompute.qrange import auto_or_positive

    opts = {
        "reference": str(p.get("reference", "cube") or "cube"),
        "volume_index": integer("orient.volume_index", p.get("volume_index", 0), minimum=0),
        "edge_nm": positive("orient.edge_nm", p.get("edge_nm", 42.0)),
        "num_div": positive("orient.num_div", p.get("num_div", 20), integer=True),
        "ties": choice("orient.ties", p.get("ties", "first"), ("first", "all")),
        "q_min_nm": auto_or_positive("orient.q_min_nm", p.get("q_min_nm", "auto"), allow_zero=True),
        "q_max_nm": auto_or_positive("orient.q_max_nm", p.get("q_max_nm", "auto")),
        "fit_fringes": positive("orient.fit_fringes", p.get("fit_fringes", 4.0)),
        "min_counts": positive("orient.min_counts", p.get("min_counts", 1.0)),
        "stride": "auto" if p.get("stride", "auto") == "auto" else positive("orient.stride", p["stride"], integer=True),
        "max_pixels": positive("orient.max_pixels", p.get("max_pixels", 6000), integer=True),
        "normalise": choice("orient.normalise", p.get("normalise", "log"), NORMALISATIONS),
        "log_floor": positive("orient.log_floor", p.get("log_floor", 0.01)),
        "chunk": positive("orient.chunk", p.get("chunk", 512), integer=True),
        "refine": boolean("orient.refine", p.get("refine", True)),
        "refine_pattern": choice("orient.refine_pattern", p.get("refine_pattern", "axes"), ("axes", "grid")),
        "refine_steps": positive("orient.refine_steps", p.get("refine_steps", 1), integer=True),
        "refine_iterations": positive("orient.refine_iterations", p.get("refine_iterations", 4), integer=True),
        "size_scan": [positive("orient.size_scan", s) for s in (p.get("size_scan") or [])],
        "threads": integer("orient.threads", p.get("threads", 0), minimum=0),
        "scheduler": validate_scheduler("orient.scheduler", p.get("scheduler", "")),
        "average_chunk": positive("orient.average_chunk", p.get("average_chunk", 256), integer=True),
    }
    with_defaults("orient", p, KNOWN)
    if opts["q_min_nm"] != "auto" and opts["q_max_nm"] != "auto" and opts["q_max_nm"] <= opts["q_min_nm"]:
        raise ParameterError("orient.q_max_nm", f"must exceed q_min_nm ({opts['q_min_nm']}), got {opts['q_max_nm']}")
    return opts


KNOWN = ("reference", "volume_index", "edge_nm", "num_div", "ties", "q_min_nm", "q_max_nm", "fit_fringes",
         "min_counts", "stride", "max_pixels", "normalise", "log_floor", "chunk", "refine", "refine_pattern",
         "refine_steps", "refine_iterations", "size_scan", "threads", "scheduler", "average_chunk")


def fit_radii(avg, o: dict, source: str) -> tuple[float, float, int, dict]:
    """(r_min, r_max in grid steps, stride, resolved q-range dict) of the fit region.

    ``auto`` q_max: the data's usable range (:func:`spicompute.qrange.resolve_q_range`),
    at most ``fit_fringes`` fringes of the reference (``fit_fringes * 2 pi / edge``):
    the fit needs the first few fringes, not the shot noise beyond.  ``auto``
    stride keeps the region at about ``max_pixels`` grid points.
    """
    from spicompute.qrange import resolve_q_range

    fringes = {"fringes_nm": o["fit_fringes"] * 2 * np.pi / o["edge_nm"]}
    qr = resolve_q_range(avg, o["q_min_nm"], o["q_max_nm"], min_counts=o["min_counts"], section="orient",
                         source=source, extra_limits=fringes if o["q_max_nm"] == "auto" else None)
    r_min, r_max = qr.radii(avg.dq_nm)
    r_max = min(r_max, avg.size // 2)
    stride = o["stride"]
    if stride == "auto":
        n_pix = np.pi * (r_max ** 2 - r_min ** 2)
        stride = max(1, int(np.ceil(np.sqrt(n_pix / o["max_pixels"]))))
    return r_min, r_max, int(stride), {**qr.to_dict(), "stride": int(stride)}


def run(args) -> int:
    import h5py
    import torch
    from tqdm import tqdm

    from spicompute.execution import dask_client, n_workers, worker_threads
    from spicompute.io.averages import read_averages
    from spicompute.io.provenance import atomic_path, stamp, write_json_atomic
    from spicompute.io.tables import write_table
    from spicompute.orient import class_blur, fit
    from spicompute.orient.gyration import GUINIER_QR, cube_sphere_radius_nm, guinier_band, low_q_anisotropy
    from spicompute.orient.sampling import fundamental_orientations, sampling_step_deg

    p = stage_params(args, "orient")
    o = _options(p)
    if o["threads"] > 0:
        torch.set_num_threads(o["threads"])
    start = time.perf_counter()
    avg = read_averages(args.averages)
    o["r_min"], o["r_max"], o["stride"], resolved = fit_radii(avg, o, args.averages)
    region = fit.fit_region(avg, o["r_min"], o["r_max"], o["stride"])
    seen = avg.valid.reshape(avg.n_averages, -1)[:, region.flat].any(axis=1)
    if not seen.all():
        bad = int(avg.average_id[np.flatnonzero(~seen)[0]])
        raise InputError(args.averages, "averages/weight",
                         f"average {bad} has no observed pixel in the fit region "
                         f"q {resolved['q_min_nm']:.3f}..{resolved['q_max_nm']:.3f} rad/nm")
    quats, weights = fundamental_orientations(o["num_div"], ties=o["ties"])
    log.info("%d averages (%dx%d) vs %d orientations (num_div %d, step %.2f deg)", avg.n_averages,
             avg.size, avg.size, len(quats), o["num_div"], sampling_step_deg(o["num_div"]))

    if o["reference"] == "cube":
        def make(size):
            return fit.cube_reference(size)
        size_factor = o["edge_nm"]
    else:
        volume, dq = fit.read_volume_file(o["reference"], o["volume_index"])

        def make(size):
            return fit.volume_reference(volume, dq, scale=size / o["edge_nm"], description=o["reference"])
        size_factor = o["edge_nm"]
    kw = dict(r_min=o["r_min"], r_max=o["r_max"], stride=o["stride"], chunk=o["chunk"],
              normalise=o["normalise"], log_floor=o["log_floor"], weights=weights)
    sizes = o["size_scan"]
    n_passes = max(1, len(sizes))
    bar = tqdm(total=len(quats) * n_passes, unit="orient", disable=progress_disabled(args),
               desc="orient")
    kw["progress"] = bar.update
    kw["average_chunk"] = o["average_chunk"]
    kw["worker_threads"] = worker_threads(o["scheduler"])
    size_nm = None
    with dask_client(o["scheduler"], "orient.scheduler") as client:
        if client is not None:
            log.info("orientation scan on Dask (%s): %d workers, runs of %d-orientation chunks per task",
                     o["scheduler"], n_workers(client), o["chunk"])
        kw["client"] = client
        if sizes:
            result, size_nm, _ = fit.scan_sizes(avg, make, sizes, quats, **kw)
        else:
            result = fit.fit_orientations(avg, make(size_factor), quats, **kw)
    bar.close()
    ref_sizes = size_nm if size_nm is not None else np.full(avg.n_averages, size_factor)
    if o["refine"]:
        refined = None
        for s in np.unique(ref_sizes):
            sel = np.flatnonzero(ref_sizes == s)
            sub = fit.FitResult(result.best_index[sel], result.quaternion[sel], result.best_cc[sel],
                                result.mean_cc[sel], result.std_cc[sel], result.gain[sel], result.stats)
            r = fit.refine_orientations(avg.subset(sel), make(float(s)), sub, quats,
                                        r_min=o["r_min"], r_max=o["r_max"], stride=o["stride"],
                                        radius_deg=sampling_step_deg(o["num_div"]) / 2,
                                        steps=o["refine_steps"], iterations=o["refine_iterations"],
                                        pattern=o["refine_pattern"],
                                        normalise=o["normalise"], log_floor=o["log_floor"])
            if refined is None:
                refined = fit.FitResult(result.best_index.copy(), result.quaternion.copy(),
                                        result.best_cc.copy(), result.mean_cc, result.std_cc,
                                        result.gain.copy(), dict(result.stats, refined=True))
            refined.quaternion[sel] = r.quaternion
            refined.best_cc[sel] = r.best_cc
            refined.gain[sel] = r.gain
        result = refined
    # per reference size: each average's orientation spread (the class-average blur, for the VAE's
    # forward model) and its best-fit slice on the full grid (for the dashboard)
    blur = np.empty((avg.n_averages, 2))
    slices = np.empty((avg.n_averages, avg.size, avg.size), dtype=np.float32)
    for s in np.unique(ref_sizes):
        sel = np.flatnonzero(ref_sizes == s)
        ref, sub = make(float(s)), avg.subset(sel)
        # (the blur fit correlates I / p whatever orient.normalise says: a log CC reads noisy averages as sharp)
        blur[sel], _ = class_blur.fit_class_blur(sub, ref, result.quaternion[sel], r_min=o["r_min"],
                                                 r_max=o["r_max"], stride=o["stride"], log_floor=o["log_floor"],
                                                 profile_quats=quats)
        slices[sel] = fit.best_slices(sub, ref, result.quaternion[sel])
    elapsed = time.perf_counter() - start

    table = pd.DataFrame({"average_id": avg.average_id,
                          "qw": result.quaternion[:, 0], "qx": result.quaternion[:, 1],
                          "qy": result.quaternion[:, 2], "qz": result.quaternion[:, 3],
                          "best_cc": result.best_cc, "gain": result.gain,
                          "blur_out_deg": blur[:, 0], "blur_in_deg": blur[:, 1]})
    if size_nm is not None:
        table["size_nm"] = size_nm
    # the Guinier-range roundness of each average: select drops elongated ones (dimers, rods)
    band = guinier_band(avg, cube_sphere_radius_nm(o["edge_nm"]))
    if band is None:
        log.warning("orient: no low-q band (fewer than two observed rings below q R = %.1f, R from "
                    "orient.edge_nm): low_q_anisotropy is NaN", GUINIER_QR)
        table["low_q_anisotropy"] = np.nan
    else:
        table["low_q_anisotropy"] = low_q_anisotropy(avg.intensity, avg.valid, avg.dq_nm, *band)
    with atomic_path(args.h5) as tmp:
        with h5py.File(tmp, "w") as h5:
            stamp(h5, COMMAND, p)
            h5.create_dataset("average_id", data=avg.average_id)
            h5.create_dataset("best_slice", data=slices, compression="gzip", shuffle=True,
                              chunks=(1, avg.size, avg.size))
            h5["best_slice"].attrs["units"] = "reference intensity (nm^6 for the closed-form cube)"
            h5.create_dataset("quaternion", data=result.quaternion)
            for name in ("best_cc", "mean_cc", "std_cc", "gain", "best_index"):
                h5.create_dataset(name, data=getattr(result, name))
            h5.create_dataset("blur_deg", data=blur)
            h5["blur_deg"].attrs["meaning"] = ("orientation spread of the class average, (M, 2) = (out of plane, "
                                               "in plane): the 7-slice kernel's +-b (degrees) that fits it best "
                                               "against the reference")
            if size_nm is not None:
                h5.create_dataset("size_nm", data=size_nm)
            g = h5.create_group("orientations")
            g.create_dataset("quaternions", data=quats)
            g.create_dataset("weights", data=weights)
            g.attrs["num_div"] = o["num_div"]
            g.attrs["ties"] = o["ties"]
            g.attrs["step_deg"] = sampling_step_deg(o["num_div"])
            h5.attrs["reference"] = o["reference"]
            h5.attrs["edge_nm"] = o["edge_nm"]
            h5.attrs["dq_nm"] = avg.dq_nm
            h5.attrs["wavelength_nm"] = avg.wavelength_nm
            h5.attrs["quaternion_convention"] = "scalar first (w,x,y,z), model->lab: frame samples I(R^T q)"
    write_table(args.out, table, stage=COMMAND)
    finite = np.isfinite(result.gain)
    metrics = {"n_averages": int(avg.n_averages), "n_orientations": int(len(quats)),
               "n_pixels": int(result.stats.get("n_pixels", 0)), "seconds": round(elapsed, 2),
               "best_cc_mean": float(np.mean(result.best_cc)),
               "low_q_band_nm": None if band is None else [round(band[0], 5), round(band[1], 5)],
               "gain_median": float(np.median(result.gain[finite])) if finite.any() else None,
               "gain_p90": float(np.percentile(result.gain[finite], 90)) if finite.any() else None,
               "gain_undefined": int((~finite).sum()),
               "blur_out_deg_median": float(np.median(blur[:, 0])),
               "blur_in_deg_median": float(np.median(blur[:, 1])), **resolved}
    write_json_atomic(args.metrics, metrics)
    log.info("median gain %.2f, mean best CC %.3f in %.1f s -> %s", metrics["gain_median"] or float("nan"),
             metrics["best_cc_mean"], elapsed, args.out)
    return 0
