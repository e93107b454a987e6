"""volumes: 3D intensity volumes decoded at points of the VAE latent space.

Latent points (paper Figs. 5 and 6):

- d = 1: a line of ``volumes.n_points`` spanning the trained averages'
  encoded z (paper: 12 points from -2.00 to 2.67);
- d = 2, 3: a regular grid of ``volumes.grid_per_axis`` points per axis over
  the same box (paper: ~200 points for d = 2);

The span (``volumes.percentiles: auto``) runs from the m-th smallest to the
m-th largest trained z on each axis, m = max(2, ceil(0.5 % of the trained
averages)): both ends of the family, so the line reaches the cube and the
sphere, while a single stray average cannot stretch it.  Percentiles such
as [2, 98] clipped a few per cent off each end, and with the cube end the
sparser one that is where the shapes change fastest.  ``[lo, hi]``
(percent) overrides.
- plus every point of the ``kind: latent_points`` selection files under
  ``selections/`` (the dashboard writes them), when their dimension matches.

Writes ``data/volumes.h5``::

    volumes/intensity (P, L, L, L) float32  radial profile multiplied back
    volumes/z         (P, d) float32
    volumes/source    (P,) str   "line" | "grid" | "selection:<name>"
    volumes/observed  (L, L, L) uint8  1 where the data constrain the volume
    attrs: dq_nm (rad/nm per voxel), center (L // 2), q_min_nm, q_max_nm
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spicompute.errors import InputError
from spicompute.stages._common import add_inputs, get_logger, stage_params

COMMAND = "volumes"
HELP = "decode 3D intensity volumes along the VAE latent coordinate (and at selected points)"
OUTPUTS = ("out",)  # --model is an input here
DEFAULTS = {"n_points": 12, "grid_per_axis": 14, "percentiles": "auto", "selections": "selections"}

log = get_logger("volumes")


def add_arguments(parser):
    add_inputs(parser, "model", "latents")
    parser.add_argument("--out", default="data/volumes.h5")


def options(raw: dict) -> dict:
    from spicompute.landscape.selections import confined_folder
    from spicompute.params import ParameterError, positive, with_defaults

    p = with_defaults("volumes", raw, DEFAULTS)
    p["n_points"] = positive("volumes.n_points", p["n_points"], integer=True)
    p["grid_per_axis"] = positive("volumes.grid_per_axis", p["grid_per_axis"], integer=True)
    pct = p["percentiles"]
    p["selections"] = str(confined_folder(p["selections"], "volumes.selections"))
    if pct == "auto":
        return p
    numbers = isinstance(pct, list) and len(pct) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in pct)
    if not (numbers and 0 <= pct[0] < pct[1] <= 100):
        raise ParameterError("volumes.percentiles", f"must be auto or [lo, hi] with 0 <= lo < hi <= 100, got {pct!r}")
    p["percentiles"] = [float(v) for v in pct]
    return p


def check_memory(n_volumes: int, size: int, param: str) -> None:
    """ParameterError before any work when ``n_volumes`` volumes of ``size``^3 do not fit in memory.

    Counts the float32 volumes twice (the decoded array and its HDF5 image).
    """
    from spicompute.params import ParameterError

    need = 2 * 4 * float(n_volumes) * size ** 3
    avail = _available_memory()
    if need > avail:
        raise ParameterError(param, f"{n_volumes} volumes of {size}^3 voxels would need {need / 2**30:.3g} GiB "
                                    f"of memory; {avail / 2**30:.3g} GiB are available")


def _available_memory() -> float:
    """Bytes of memory available to this process (MemAvailable; the physical memory if unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def run(args) -> int:
    import h5py

    from spicompute.io.provenance import stamp
    from spicompute.io.storage import memory_output
    from spicompute.io.tables import read_table
    from spicompute.landscape.selections import list_selections
    from spicompute.vae.line import latent_points
    from spicompute.vae.model import load_vae
    from spicompute.vae.train import decode_volumes

    p = options(stage_params(args, "volumes"))
    model, arch, prep = load_vae(args.model)
    d = arch.latent_dim
    check_memory(p["n_points"] if d == 1 else p["grid_per_axis"] ** d, arch.volume_size,
                 "volumes.n_points" if d == 1 else "volumes.grid_per_axis")
    table = read_table(args.latents)
    cols = [f"z_{i + 1}" for i in range(d)]
    for col in cols:
        if col not in table.columns:
            raise InputError(args.latents, col, "column missing")
    trained = table["vae_trained"].to_numpy(bool) if "vae_trained" in table.columns else np.ones(len(table), bool)
    if not trained.any():
        raise InputError(args.latents, "vae_trained", "no trained row: no latent range to decode along")
    z = table.loc[trained, cols].to_numpy(np.float64)
    for k, col in enumerate(cols):
        bad = int((~np.isfinite(z[:, k])).sum())
        if bad:
            raise InputError(args.latents, col, f"{bad} of {len(z)} trained rows are NaN or Inf (re-run the vae stage)")
    points = latent_points(z, p)
    source = ["line" if d == 1 else "grid"] * len(points)
    for sel in list_selections(p["selections"], kind="latent_points"):
        pts = np.asarray(sel["points"], np.float64)
        if pts.shape[1] != d:
            log.warning("selection %s has %d-D points; the latent is %d-D: skipped", sel["name"], pts.shape[1], d)
            continue
        points = np.concatenate([points, pts])
        source += [f"selection:{sel['name']}"] * len(pts)
    volumes = decode_volumes(model, points, prep)
    if not np.all(np.isfinite(volumes)):  # never a NaN volume with exit 0
        raise InputError(args.model, None, "the decoded volumes contain NaN or Inf (re-train the vae stage)")
    with memory_output(args.out) as tmp:  # HDF5 never writes to disk itself: see io.storage
        with h5py.File(tmp, "w") as h5:
            stamp(h5, COMMAND, p)
            g = h5.create_group("volumes")
            L = arch.volume_size
            g.create_dataset("intensity", data=volumes, compression="gzip", shuffle=True, chunks=(1, L, L, L))
            g["intensity"].attrs["units"] = "mean photons per pixel at unit fluence (radial profile multiplied back)"
            g.create_dataset("z", data=points.astype(np.float32))
            g.create_dataset("source", data=np.asarray(source, dtype=object), dtype=h5py.string_dtype())
            g.create_dataset("observed", data=prep.volume_observed().astype(np.uint8))
            h5.attrs["dq_nm"] = prep.dq3_nm
            h5.attrs["center"] = L // 2
            h5.attrs["q_min_nm"] = prep.q_min_nm
            h5.attrs["q_max_nm"] = prep.q_max_nm
            h5.attrs["latent_dim"] = d
            if prep.particle_size_nm:
                h5.attrs["particle_size_nm"] = prep.particle_size_nm
    log.info("%d volumes of %d^3 (latent %d-D, %d from selections) -> %s", len(points), arch.volume_size, d,
             sum(s.startswith("selection:") for s in source), args.out)
    return 0
