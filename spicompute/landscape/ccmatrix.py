"""The common-line CC matrix of a set of averages."""

from __future__ import annotations

import logging
import time

import numpy as np

from spicompute.errors import InputError, ParameterError
from spicompute.execution import resolve_device
from spicompute.landscape import commonlines as cl
from spicompute.landscape.size_scale import MIN_BINS, scaled_polar_lines, size_scales

log = logging.getLogger("spicompute.ccmatrix")


def usable_averages(averages, p: dict) -> tuple[np.ndarray, float]:
    """(M,) bool: averages that carry signal -- observed, not all zero, >= min_frames members.

    ``min_frames: auto`` is a fifth of the median occupancy: classes that EMC
    left (nearly) empty are shot noise and must not become landscape points.
    """
    n_frames = averages.n_frames
    min_frames = 0.2 * float(np.median(n_frames)) if p["min_frames"] == "auto" else float(p["min_frames"])
    signal = (averages.intensity * averages.valid).reshape(averages.n_averages, -1).sum(1) > 0
    return signal & averages.valid.any(axis=(1, 2)) & (n_frames >= min_frames), min_frames


def radius_grid(averages, p: dict, usable: np.ndarray, source: str = "averages") -> tuple[np.ndarray, dict]:
    """Radii (grid steps) of the line samples, and the resolved q-range.

    ``null`` bounds are resolved from the usable averages
    (:func:`spicompute.qrange.resolve_q_range`): the beamstop edge by
    ``inner_coverage``, and q_max where coverage falls below ``outer_coverage`` or
    a typical average holds fewer than ``min_counts`` expected photons per grid
    point -- beyond that the radially normalised lines are shot noise.
    """
    from spicompute.qrange import resolve_q_range

    dq_nm, size = averages.dq_nm, averages.size
    qr = resolve_q_range(averages, "auto" if p["q_min_nm"] is None else p["q_min_nm"],
                         "auto" if p["q_max_nm"] is None else p["q_max_nm"], min_counts=p["min_counts"],
                         inner_coverage=p["inner_coverage"], outer_coverage=p["outer_coverage"],
                         index=np.flatnonzero(usable), section="ccmatrix", source=source)
    r0, r1 = qr.radii(dq_nm)
    r1 = min(r1, size // 2 - 1 + 0.5 * (size % 2))
    if r1 <= r0:
        raise ParameterError("ccmatrix.q_max_nm", f"q range [{r0 * dq_nm:.4g}, "
                             f"{r1 * dq_nm:.4g}] rad/nm is empty on this grid")
    radii = np.arange(r0, r1 + 1e-9, p["radial_step"])
    if len(radii) < 3:
        raise ParameterError("ccmatrix.radial_step", f"only {len(radii)} radii in the q range")
    return radii, qr.to_dict()


def compute_ccmatrix(averages, p: dict, progress: bool = False, source: str = "averages"):
    """All the science of the stage: returns (CCResult, radii, profile, info)."""
    t0 = time.perf_counter()
    valid = averages.valid
    usable, min_frames = usable_averages(averages, p)
    if usable.sum() < 2:
        raise InputError(source, "averages/n_frames", f"only {int(usable.sum())} averages carry signal "
                         f"(observed, not empty, >= {min_frames:.3g} frames)")
    if not usable.all():
        log.warning("%d of %d averages are empty or have < %.3g member frames: flagged unusable "
                    "(their CC rows are 0; embed leaves them out of the fit)", int((~usable).sum()),
                    len(usable), min_frames)
    radii, qrange = radius_grid(averages, p, usable, source)
    intensity, sigma_px = averages.intensity, p["smooth_q_nm"] / averages.dq_nm
    if sigma_px > 0:   # after the q range: the counts rule reads the averages as they are
        intensity = cl.smooth_averages(intensity, valid, sigma_px)
    raw, rvalid = cl.polar_lines(intensity, valid, radii, p["n_angles"],
                                 min_coverage=p["min_coverage"])
    if len(radii) >= MIN_BINS:
        scales = size_scales(raw, rvalid, radii, usable)
    elif p["size_normalise"]:
        raise ParameterError("ccmatrix.size_normalise", f"a size scale needs >= {MIN_BINS} radii in the q range, "
                             f"got {len(radii)} (widen ccmatrix.q_min_nm / q_max_nm or lower radial_step)")
    else:   # too few radii for a fringe spacing: no size information, say so and carry on
        log.warning("ccmatrix: only %d radii: no size scale (set to 1)", len(radii))
        scales = np.ones(averages.n_averages)
    if p["size_normalise"]:   # every average brought to the common size: the CC compares shape only
        raw, rvalid = scaled_polar_lines(intensity, valid, radii, scales, p["n_angles"],
                                         min_coverage=p["min_coverage"])
        log.info("ccmatrix: lines resampled at r / size scale (5-95 %% of the scales: %.3f-%.3f)",
                 *np.percentile(scales[usable], [5, 95]))
    profile = cl.line_profile(raw, rvalid)
    lines = cl.normalise_lines(raw, rvalid, p["normalisation"], profile=profile, radii=radii,
                               q_power=p["q_power"])
    t1 = time.perf_counter()
    device = resolve_device(p["device"], "ccmatrix.device") if p["backend"] != "numpy" else "cpu"
    result = cl.cc_matrix(lines, block=p["block"] or None, backend=p["backend"], device=device,
                          scheduler=p["scheduler"], band_blocks=p["band_blocks"],
                          progress=progress)
    t2 = time.perf_counter()
    dead = int((np.abs(lines).sum(-1) == 0).sum())
    backend = p["backend"] if p["backend"] != "auto" else ("numpy" if device == "cpu" else "torch")
    # an unusable average correlates with nothing (its lines may be all zero or pure noise)
    result.cc[~usable, :] = 0.0
    result.cc[:, ~usable] = 0.0
    result.cc[np.flatnonzero(~usable), np.flatnonzero(~usable)] = 1.0
    info = {"seconds_lines": t1 - t0, "seconds_cc": t2 - t1, "device": device, "backend": backend,
            "unusable_lines": dead, "valid_bin_fraction": float(rvalid.mean()), "usable": usable,
            "min_frames": min_frames, "q_range": qrange, "size_scale": scales, "smooth_px": sigma_px}
    return result, radii, profile, info
