"""phase: real-space densities of the VAE volumes (and of chosen 2D averages).

Each intensity volume of ``data/volumes.h5`` is phased by difference map +
error reduction with a shrink-wrap support and positivity; the measured
modulus is imposed only where ``volumes/observed`` is 1.  Several random
starts are aligned (translation, centro-inversion twin) and averaged; their
PRTF gives a resolution.  Per volume: particle volume from the Porod
invariant and the phased forward scattering (the validated estimate), the
paper's volume at a density threshold of 1e-4 of the total mass (Fig. 5D), an
intensity-only cross-check, support size, PRTF resolution, Fourier error and
whether it is below ``phase.max_error`` (converged).
Chosen class averages of ``data/averages.h5`` are phased in 2D (paper
Fig. 1B).  Details and file formats: docs/volumes_phase.md.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from spicompute.errors import InputError, ParameterError
from spicompute.stages._common import add_inputs, add_outputs, get_logger, progress_disabled, stage_params

COMMAND = "phase"
HELP = "phase retrieval of the VAE volumes (DM+ER, shrink-wrap, PRTF) and of chosen 2D averages"

log = get_logger("phase")

DEFAULTS = {
    "n_starts": 4, "n_dm": 150, "n_er": 50, "beta": 0.9,
    "shrinkwrap_every": 10, "shrinkwrap_start": 0, "er_per_update": 0, "shrinkwrap_threshold": 0.2,
    "sigma_start_nm": "auto", "sigma_end_nm": "auto",
    "autocorrelation_threshold": 0.04, "support_scale": 1.0, "coarse_size": 45,
    "keep_factor": 2.0, "volume_threshold": 1.0e-4, "max_error": 0.15, "porod_from": 0.7,
    "averages_2d": "auto", "averages_2d_count": 6, "seed": 0, "threads": 0,
    "backend": "auto", "device": "auto",
}


def add_arguments(parser):
    add_inputs(parser, "volumes", "averages")
    add_outputs(parser, COMMAND, "data/phased.h5", "densities, supports, PRTFs")
    parser.add_argument("--table", default="results/volumes.parquet", help="one row per volume point")


def _sigma(name: str, value):
    from spicompute.params import positive

    if value is None or value == "auto":
        return None
    return positive(f"phase.{name}", value)


def options(p: dict) -> dict:
    """Validated ``phase`` parameters merged over :data:`DEFAULTS`."""
    from spicompute.params import in_range, integer, positive, with_defaults

    o = with_defaults("phase", p, DEFAULTS)
    out = {
        "n_starts": integer("phase.n_starts", o["n_starts"], minimum=1),
        "n_dm": positive("phase.n_dm", o["n_dm"], integer=True, allow_zero=True),
        "n_er": positive("phase.n_er", o["n_er"], integer=True, allow_zero=True),
        "beta": in_range("phase.beta", o["beta"], 0.0, 1.5, low_open=True),
        "shrinkwrap_every": positive("phase.shrinkwrap_every", o["shrinkwrap_every"], integer=True,
                                     allow_zero=True),
        "shrinkwrap_start": positive("phase.shrinkwrap_start", o["shrinkwrap_start"], integer=True,
                                     allow_zero=True),
        "er_per_update": positive("phase.er_per_update", o["er_per_update"], integer=True,
                                  allow_zero=True),
        "coarse_size": positive("phase.coarse_size", o["coarse_size"], integer=True, allow_zero=True),
        "support_scale": in_range("phase.support_scale", o["support_scale"], 0.0, 1.0, low_open=True),
        "shrinkwrap_threshold": in_range("phase.shrinkwrap_threshold", o["shrinkwrap_threshold"],
                                         0.0, 1.0, low_open=True, high_open=True),
        "sigma_start_nm": _sigma("sigma_start_nm", o["sigma_start_nm"]),
        "sigma_end_nm": _sigma("sigma_end_nm", o["sigma_end_nm"]),
        "autocorrelation_threshold": in_range("phase.autocorrelation_threshold",
                                              o["autocorrelation_threshold"], 0.0, 1.0,
                                              low_open=True, high_open=True),
        "keep_factor": in_range("phase.keep_factor", o["keep_factor"], 1.0, 1e6),
        "volume_threshold": in_range("phase.volume_threshold", o["volume_threshold"], 0.0, 1.0,
                                     low_open=True, high_open=True),
        "max_error": in_range("phase.max_error", o["max_error"], 0.0, 1.0, low_open=True),
        "porod_from": in_range("phase.porod_from", o["porod_from"], 0.0, 1.0, low_open=True,
                               high_open=True),
        "averages_2d_count": positive("phase.averages_2d_count", o["averages_2d_count"],
                                      integer=True, allow_zero=True),
        "seed": int(positive("phase.seed", o["seed"], integer=True, allow_zero=True)),
        "threads": int(positive("phase.threads", o["threads"], integer=True, allow_zero=True)),
    }
    if out["n_dm"] + out["n_er"] == 0:
        raise ParameterError("phase.n_er", "n_dm + n_er must be > 0")
    out["backend"], out["device"] = _backend(o["backend"], o["device"])
    sel = o["averages_2d"]
    if sel is None:
        sel = []
    if sel != "auto":
        if not isinstance(sel, (list, tuple)):
            raise ParameterError("phase.averages_2d", f"must be 'auto' or a list of average_id, got {sel!r}")
        try:
            sel = [int(v) for v in sel]
        except (TypeError, ValueError):
            raise ParameterError("phase.averages_2d", f"must be integers, got {sel!r}") from None
    out["averages_2d"] = sel
    return out


def _backend(backend, device) -> tuple[str, str]:
    """(backend, device): auto = torch on a CUDA device when one is present, numpy on the CPU."""
    from spicompute.execution import resolve_device
    from spicompute.params import choice

    backend = choice("phase.backend", backend, ("auto", "numpy", "torch"))
    dev = resolve_device(device, "phase.device")
    if backend == "auto":
        backend = "torch" if dev != "cpu" else "numpy"
    if backend == "numpy" and dev != "cpu":
        raise ParameterError("phase.backend", f"numpy runs on the CPU; device {dev!r} needs backend torch")
    return backend, dev


def settings_for(o: dict, seed):
    from spicompute.phasing import PhasingSettings

    return PhasingSettings(n_dm=o["n_dm"], n_er=o["n_er"], beta=o["beta"], n_starts=o["n_starts"],
                           shrinkwrap_every=o["shrinkwrap_every"],
                           shrinkwrap_threshold=o["shrinkwrap_threshold"],
                           shrinkwrap_start=o["shrinkwrap_start"], er_per_update=o["er_per_update"],
                           support_scale=o["support_scale"], coarse_size=o["coarse_size"],
                           sigma_start_nm=o["sigma_start_nm"], sigma_end_nm=o["sigma_end_nm"],
                           autocorrelation_threshold=o["autocorrelation_threshold"],
                           keep_factor=o["keep_factor"],
                           seed=seed, workers=o["threads"] if o["threads"] > 0 else -1,
                           backend=o["backend"], device=o["device"])


def choose_averages(avg, selection, count: int, source: str) -> np.ndarray:
    """Indices (into ``avg``) of the averages to phase in 2D.

    ``auto``: round robin over bootstrap runs, most occupied (``n_frames``)
    first, up to ``count``.  A list: those ``average_id`` (each must exist).
    """
    if selection == "auto":
        order = np.lexsort((-avg.n_frames, avg.run))  # by run, then occupancy descending
        rank = np.empty(avg.n_averages, dtype=np.int64)
        for r in np.unique(avg.run):
            members = order[avg.run[order] == r]
            rank[members] = np.arange(len(members))
        picked = np.lexsort((-avg.n_frames, rank))[:count]
        return np.asarray(picked, dtype=np.int64)
    index = {int(a): i for i, a in enumerate(avg.average_id)}
    missing = [a for a in selection if a not in index]
    if missing:
        raise ParameterError("phase.averages_2d", f"average_id {missing[0]} not in {source}")
    return np.array([index[a] for a in selection], dtype=np.int64)


def _fmt(value, digits=0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run(args) -> int:
    import h5py
    from tqdm import tqdm

    from spicompute import phasing
    from spicompute.io.averages import read_averages
    from spicompute.io.provenance import stamp, write_json_atomic
    from spicompute.io.storage import memory_output
    from spicompute.io.tables import write_table
    from spicompute.io.volumes import read_volumes
    from spicompute.phasing import check_sampling

    p = stage_params(args, "phase")
    o = options(p)
    start = time.perf_counter()
    vol = read_volumes(args.volumes)
    check_sampling(vol, args.volumes)
    avg, picked = None, np.zeros(0, dtype=np.int64)
    wants_2d = o["averages_2d"] == "auto" and o["averages_2d_count"] > 0 or (
        o["averages_2d"] != "auto" and len(o["averages_2d"]) > 0)
    if wants_2d:
        avg = read_averages(args.averages)
        picked = choose_averages(avg, o["averages_2d"], o["averages_2d_count"], args.averages)

    n_vol, size, dq = vol["intensity"].shape[0], vol["size"], vol["dq_nm"]
    dx = phasing.real_space_step(size, dq)
    n_shells = size // 2 + 1
    density = np.empty((n_vol,) + (size,) * 3, dtype=np.float32)
    support = np.empty((n_vol,) + (size,) * 3, dtype=np.uint8)
    prtf = np.empty((n_vol, n_shells), dtype=np.float64)
    pvol = np.empty(n_vol)
    pvol_thr = np.empty(n_vol)
    pvol_int = np.empty(n_vol)
    tail = np.empty(n_vol)
    pvol_half = np.empty(n_vol)
    at_limit = np.zeros(n_vol, dtype=bool)
    n_kept = np.zeros(n_vol, dtype=np.int64)
    compact = np.ones(n_vol, dtype=bool)
    tight = np.zeros(n_vol, dtype=bool)
    forward_ratio = np.full(n_vol, np.nan)
    svox = np.empty(n_vol, dtype=np.int64)
    res = np.empty(n_vol)
    err = np.empty(n_vol)
    log.info("%d volumes %d^3 (dq %.4g /nm, dx %.3g nm), %d starts x (%d DM + %d ER)",
             n_vol, size, dq, dx, o["n_starts"], o["n_dm"], o["n_er"])
    q_shell = None
    for i in tqdm(range(n_vol), desc="phase", unit="vol", disable=progress_disabled(args)):
        r = phasing.phase_retrieval(vol["intensity"][i], vol["observed"], dq,
                                    settings_for(o, [o["seed"], 3, i]))
        density[i], support[i], prtf[i] = r.density, r.support, r.prtf
        q_shell = r.prtf_q_nm
        pvol[i], tail[i] = phasing.invariant_volume(r.density, vol["intensity"][i], vol["observed"],
                                                    dq, o["porod_from"])
        pvol_int[i] = phasing.intensity_volume(vol["intensity"][i], vol["observed"], dq,
                                               o["porod_from"])
        pvol_thr[i] = phasing.particle_volume(r.density, dx, o["volume_threshold"])
        pvol_half[i] = phasing.particle_volume_half_max(r.density, dx)
        svox[i], res[i], err[i] = int(r.support.sum()), r.resolution_nm, r.final_error
        at_limit[i] = phasing.prtf_at_data_limit(r.prtf, r.prtf_q_nm)
        n_kept[i] = int(r.kept.sum())
        compact[i], tight[i], forward_ratio[i] = r.compact, r.tight_start, r.forward_ratio[r.best]
    # converged: a low Fourier error *and* a compact object (a density spread over the field of view
    # can fit the observed shell; its forward scattering, which the beamstop leaves free, is not the data's)
    converged = (err <= o["max_error"]) & compact
    for i in np.flatnonzero(~converged):
        if not compact[i]:
            log.warning("volume %d: phasing did not converge (every start spread over the field of view, "
                        "also from half the autocorrelation support: |F(0)|^2 %.1f x the data's Guinier "
                        "I(0)); its shape and volume are flagged (column converged) and left out of the "
                        "metrics (docs/volumes_phase.md)", i, forward_ratio[i])
            continue
        log.warning("volume %d: phasing did not converge (Fourier error %.3f > phase.max_error %.3g); "
                    "its shape and volume are flagged (column converged) and left out of the "
                    "metrics; try more phase.n_starts / n_dm (an error that does not drop with them is the "
                    "volume's own inconsistency, docs/volumes_phase.md)", i, err[i], o["max_error"])

    n2 = len(picked)
    dens2 = supp2 = None
    res2, err2 = np.empty(n2), np.empty(n2)
    dx2 = float("nan")
    if n2:
        n = avg.size
        dx2 = phasing.real_space_step(n, avg.dq_nm)
        dens2 = np.empty((n2, n, n), dtype=np.float32)
        supp2 = np.empty((n2, n, n), dtype=np.uint8)
        for k, j in enumerate(picked):
            obs = avg.weight[j] > 0
            if not obs.any():
                raise InputError(args.averages, "averages/weight",
                                 f"average {int(avg.average_id[j])} has no observed pixel")
            r = phasing.phase_retrieval(avg.intensity[j], obs, avg.dq_nm,
                                        settings_for(o, [o["seed"], 2, int(avg.average_id[j])]))
            dens2[k], supp2[k], res2[k], err2[k] = r.density, r.support, r.resolution_nm, r.final_error
    elapsed = time.perf_counter() - start
    for name, values in (("phased/density", density), ("averages2d/density", dens2)):
        if values is not None and not np.all(np.isfinite(values)):  # never a NaN result with exit 0
            raise InputError(args.volumes if name.startswith("phased") else args.averages, name,
                             "phasing produced NaN or Inf densities from this input")

    with memory_output(args.out) as tmp:  # HDF5 never writes to disk itself: see io.storage
        with h5py.File(tmp, "w") as h5:
            stamp(h5, COMMAND, p)
            h5.attrs["dx_nm"] = dx
            h5.attrs["dq_nm"] = dq
            h5.attrs["center"] = size // 2
            g = h5.create_group("phased")
            chunks = (1,) + (size,) * 3
            g.create_dataset("density", data=density, compression="gzip", shuffle=True, chunks=chunks)
            g["density"].attrs["units"] = ("density relative to the unit-density particle whose |F|^2 "
                                           "is the input intensity (arbitrary if that is arbitrary)")
            g.create_dataset("support", data=support, compression="gzip", shuffle=True, chunks=chunks)
            g.create_dataset("prtf", data=prtf)
            g.create_dataset("prtf_q_nm", data=q_shell)
            g.create_dataset("z", data=vol["z"])
            g.create_dataset("particle_volume_nm3", data=pvol)
            g.create_dataset("particle_volume_threshold_nm3", data=pvol_thr)
            g.create_dataset("converged", data=converged.astype(np.uint8))
            g.create_dataset("support_voxels", data=svox)
            g.create_dataset("prtf_resolution_nm", data=res)
            g.create_dataset("final_error", data=err)
            g.attrs["dx_nm"] = dx
            g.attrs["volume_threshold"] = o["volume_threshold"]
            g.attrs["max_error"] = o["max_error"]
            g.attrs["layout"] = "centred: x = 0 at index L // 2, axes as in volumes/intensity"
            a = h5.create_group("averages2d")
            if n2:
                a.create_dataset("density", data=dens2, compression="gzip", shuffle=True)
                a.create_dataset("support", data=supp2, compression="gzip", shuffle=True)
            else:
                a.create_dataset("density", data=np.zeros((0, 0, 0), dtype=np.float32))
                a.create_dataset("support", data=np.zeros((0, 0, 0), dtype=np.uint8))
            a.create_dataset("average_id", data=(avg.average_id[picked] if n2 else np.zeros(0, np.int64)))
            a.create_dataset("dx_nm", data=dx2)
            a.create_dataset("prtf_resolution_nm", data=res2)
            a.create_dataset("final_error", data=err2)
            a.attrs["dx_nm"] = dx2
            a.attrs["selection"] = str(o["averages_2d"])
    table = pd.DataFrame({"volume_index": np.arange(n_vol, dtype=np.int64)})
    for k in range(vol["z"].shape[1]):
        table[f"z_{k + 1}"] = vol["z"][:, k]
    table["particle_volume_nm3"] = pvol
    table["particle_volume_threshold_nm3"] = pvol_thr
    table["particle_volume_intensity_nm3"] = pvol_int
    table["porod_tail_share"] = tail
    table["particle_volume_half_max_nm3"] = pvol_half
    table["support_voxels"] = svox
    table["prtf_resolution_nm"] = res
    table["prtf_at_data_limit"] = at_limit
    table["n_starts_kept"] = n_kept
    table["final_error"] = err
    table["converged"] = converged
    table["compact"] = compact              # not spread over the field of view (phasing.compact_starts)
    table["forward_ratio"] = forward_ratio  # the best start's |F(0)|^2 / the data's Guinier I(0)
    table["tight_start"] = tight            # phased from half the autocorrelation support (the retry)
    write_table(args.table, table, stage=COMMAND, params=p)

    def _stat(fn, values):
        good = values[converged & np.isfinite(values)]
        return float(fn(good)) if good.size else None

    metrics = {"n_volumes": int(n_vol), "n_converged": int(converged.sum()),
               "n_spread": int((~compact).sum()), "n_tight_start": int(tight.sum()), "grid": int(size),
               "dx_nm": round(dx, 4), "seconds": round(elapsed, 2), "max_error": o["max_error"],
               # over the converged volumes only: a failed retrieval's shape is no measurement
               "particle_volume_nm3_min": _stat(np.min, pvol),
               "particle_volume_nm3_max": _stat(np.max, pvol),
               "prtf_resolution_nm_median": _stat(np.median, res),
               "n_prtf_at_data_limit": int(at_limit.sum()),
               "n_no_resolution": int(np.isnan(res).sum()),
               "final_error_mean": float(err.mean()), "final_error_max": float(err.max()),
               "n_averages_2d": int(n2)}
    write_json_atomic(args.metrics, metrics)
    log.info("%d volumes phased in %.1f s, %d converged (Fourier error <= %.3g): particle volume "
             "%s..%s nm^3, median PRTF resolution %s nm -> %s, %s", n_vol, elapsed,
             metrics["n_converged"], o["max_error"], _fmt(metrics["particle_volume_nm3_min"]),
             _fmt(metrics["particle_volume_nm3_max"]), _fmt(metrics["prtf_resolution_nm_median"], 2),
             args.out, args.table)
    return 0
