"""Common-line CC matrix of all class averages.

Reads the averages file, resamples every average on a polar grid (radii x
angles, Friedel-folded into ``n_angles`` lines over pi), normalises the
lines (default: divide by the data set's mean radial profile, then centre
and unit-normalise each line), and computes for every pair of averages the
maximum correlation over all line pairs plus the best angle pair, as
blocked matrix products (torch/numpy BLAS, GPU when present, Dask over
bands of blocks with ``scheduler``).

Writes the CC matrix file (``cc``, ``angle_a``, ``angle_b``, angle grid, q
range, radial profile, provenance) and a metrics JSON.  See
docs/ccmatrix_embed.md.
"""

from __future__ import annotations

import logging

import numpy as np

from spicompute.errors import ParameterError
from spicompute.io.averages import read_averages
from spicompute.io.provenance import write_json_atomic
from spicompute.landscape import ccmatrix, commonlines as cl
from spicompute.params import choice, in_range, positive, with_defaults
from spicompute.stages._common import add_inputs, add_outputs, progress_disabled, stage_params

COMMAND = "ccmatrix"
HELP = "common-line CC matrix of the class averages (blocked BLAS, best angle pairs)"

log = logging.getLogger("spicompute.ccmatrix")

DEFAULTS = {
    "n_angles": 180, "q_min_nm": None, "q_max_nm": None, "radial_step": 1.0,
    "inner_coverage": 0.9, "outer_coverage": 0.5, "min_coverage": 0.5,
    "normalisation": "radial", "q_power": 0.0, "block": 0, "backend": "auto",
    "min_counts": 1.0, "min_frames": "auto",
    "device": "auto", "scheduler": "", "band_blocks": 4, "size_normalise": False, "smooth_q_nm": 0.0,
}


def add_arguments(parser) -> None:
    add_inputs(parser, "averages")
    add_outputs(parser, COMMAND, "data/ccmatrix.h5", "CC matrix file (output)")


def check_params(p: dict) -> dict:
    """Validated ``ccmatrix`` section merged over the defaults."""
    q = with_defaults("ccmatrix", p, DEFAULTS)
    q["n_angles"] = positive("ccmatrix.n_angles", q["n_angles"], integer=True)
    if q["n_angles"] < 2:
        raise ParameterError("ccmatrix.n_angles", f"must be >= 2, got {q['n_angles']}")
    for key in ("q_min_nm", "q_max_nm"):
        if q[key] is not None:
            q[key] = positive(f"ccmatrix.{key}", q[key], allow_zero=key == "q_min_nm")
    if q["q_min_nm"] is not None and q["q_max_nm"] is not None and q["q_min_nm"] >= q["q_max_nm"]:
        raise ParameterError("ccmatrix.q_max_nm", "must exceed q_min_nm")
    q["radial_step"] = positive("ccmatrix.radial_step", q["radial_step"])
    for key in ("inner_coverage", "outer_coverage", "min_coverage"):
        q[key] = in_range(f"ccmatrix.{key}", q[key], 0, 1, low_open=True)
    choice("ccmatrix.normalisation", q["normalisation"], cl.NORMALISATIONS)
    q["q_power"] = in_range("ccmatrix.q_power", q["q_power"], -4, 4)
    q["block"] = positive("ccmatrix.block", q["block"], integer=True, allow_zero=True)
    choice("ccmatrix.backend", q["backend"], cl.BACKENDS)
    if not isinstance(q["device"], str):
        raise ParameterError("ccmatrix.device", f"must be a string, got {q['device']!r}")
    from spicompute.params import validate_scheduler

    q["scheduler"] = validate_scheduler("ccmatrix.scheduler", q["scheduler"])
    q["band_blocks"] = positive("ccmatrix.band_blocks", q["band_blocks"], integer=True)
    if not isinstance(q["size_normalise"], bool):
        raise ParameterError("ccmatrix.size_normalise", f"must be true or false, got {q['size_normalise']!r}")
    q["min_counts"] = positive("ccmatrix.min_counts", q["min_counts"])
    q["smooth_q_nm"] = positive("ccmatrix.smooth_q_nm", q["smooth_q_nm"], allow_zero=True)
    if q["min_frames"] != "auto":
        q["min_frames"] = positive("ccmatrix.min_frames", q["min_frames"], allow_zero=True)
    return q


def run(args) -> int:
    p = check_params(stage_params(args, COMMAND))
    averages = read_averages(args.averages)
    m = averages.n_averages
    log.info("ccmatrix: %d averages of %dx%d, %d lines over pi, normalisation %s", m,
             averages.size, averages.size, p["n_angles"], p["normalisation"])
    result, radii, profile, info = ccmatrix.compute_ccmatrix(averages, p, progress=not progress_disabled(args),
                                            source=args.averages)
    n_lines, n_r = p["n_angles"], len(radii)
    angles = np.arange(n_lines) * np.pi / n_lines
    flops = cl.cc_flops(m, n_lines, n_r)
    cl.write_ccmatrix(args.out, result, average_id=averages.average_id, angles_rad=angles,
                      radii=radii, dq_nm=averages.dq_nm, profile=profile,
                      normalisation=p["normalisation"], params=p,
                      attrs={"device": info["device"], "backend": info["backend"]},
                      usable=info["usable"], n_frames=averages.n_frames, size_scale=info["size_scale"])
    off = result.cc[~np.eye(m, dtype=bool)] if m > 1 else np.zeros(1)
    metrics = {
        "n_averages": m, "n_angles": n_lines, "n_radii": n_r,
        "q_min_nm": float(radii[0] * averages.dq_nm), "q_max_nm": float(radii[-1] * averages.dq_nm),
        "normalisation": p["normalisation"], "device": info["device"],
        "backend": info["backend"],
        "seconds_lines": info["seconds_lines"], "seconds_cc": info["seconds_cc"],
        "gflops": flops / max(info["seconds_cc"], 1e-9) / 1e9,
        "cc_offdiag_mean": float(off.mean()), "cc_offdiag_p05": float(np.percentile(off, 5)),
        "cc_offdiag_p95": float(np.percentile(off, 95)),
        "unusable_lines": info["unusable_lines"],
        "n_unusable_averages": int((~info["usable"]).sum()), "min_frames": info["min_frames"],
        "q_max_limits": info["q_range"]["q_max_limits"],
        "valid_bin_fraction": info["valid_bin_fraction"],
        "size_normalise": p["size_normalise"], "smooth_q_nm": p["smooth_q_nm"],
        "smooth_px": info["smooth_px"],
        "size_scale_p05_p95": [float(x) for x in np.percentile(info["size_scale"][info["usable"]], [5, 95])],
    }
    if result.rescored_fraction is not None:   # bf16 screen: the float32 work that was left
        metrics["rescored_fraction"] = result.rescored_fraction
    write_json_atomic(args.metrics, metrics)
    log.info("ccmatrix: %d pairs in %.1f s (%.1f GFLOP/s), CC 5-95%% [%.3f, %.3f] -> %s",
             m * (m - 1) // 2, info["seconds_cc"], metrics["gflops"],
             metrics["cc_offdiag_p05"], metrics["cc_offdiag_p95"], args.out)
    return 0
