"""European XFEL AGIPD 1M geometry -> per-pixel q-vectors.

The unassembled AGIPD 1M layout is (16 modules, 512 slow-scan, 128 fast-scan)
pixels; frames keep this layout flattened to P = 16*512*128 pixels in module
order, and images are assembled only for display.

Geometry comes from a CrystFEL ``.geom`` file read by extra-geom (extra-geom
has no EuXFEL-HDF5 reader for AGIPD 1M, only for LPD/DSSC).  Without one, :data:`DEFAULT_QUAD_POS_MM` (extra-geom's documented
example quadrant positions for SPB AGIPD 1M) is used.  Pixel positions from
extra-geom are in metres in the detector plane (beam along +z through the
origin); the detector sits ``distance_mm`` downstream of the sample.

q = k_out - k_in with |k| = 2 pi / lambda (rad/nm), lambda = 1.23984193 / E[keV] nm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spicompute.errors import InputError, ParameterError

AGIPD_SHAPE = (16, 512, 128)
HC_KEV_NM = 1.23984193  # h c in keV nm
# extra-geom documentation's example quadrant corner positions for SPB AGIPD 1M (mm)
DEFAULT_QUAD_POS_MM = [(-525, 625), (-550, -10), (520, -160), (542.5, 475)]


def load_agipd_geometry(path: str | Path | None = None):
    """AGIPD 1M geometry from a CrystFEL .geom file, or the default.

    Returns an ``extra_geom.AGIPD_1MGeometry``.
    """
    from extra_geom import AGIPD_1MGeometry

    if not path:
        return AGIPD_1MGeometry.from_quad_positions(quad_pos=DEFAULT_QUAD_POS_MM)
    p = Path(path)
    if p.suffix != ".geom":
        raise InputError(p, "data.geometry", "AGIPD 1M geometry must be a CrystFEL .geom file "
                         "(extra-geom reads EuXFEL HDF5 geometry only for LPD/DSSC)")
    if not p.exists():
        raise InputError(p, "data.geometry", "geometry file not found")
    try:
        return AGIPD_1MGeometry.from_crystfel_geom(str(p))
    except Exception as exc:  # extra-geom raises many kinds
        raise InputError(p, "data.geometry", f"not a readable AGIPD 1M geometry ({exc})") from exc


def pixel_q(positions_m: np.ndarray, distance_mm: float, photon_energy_kev: float) -> np.ndarray:
    """Scattering vectors of pixels on the Ewald sphere.

    positions_m : (..., 3) pixel centres in metres in the detector frame
                  (x, y in the plane, z offset along the beam; beam at x = y = 0).
    distance_mm : sample-to-detector distance (mm, > 0).
    photon_energy_kev : photon energy (keV, > 0).
    Returns (..., 3) float64 q = k_out - k_in in rad/nm.
    """
    if not distance_mm or distance_mm <= 0:
        raise ParameterError("data.distance_mm", f"must be > 0, got {distance_mm}")
    if not photon_energy_kev or photon_energy_kev <= 0:
        raise ParameterError("data.photon_energy_kev", f"must be > 0, got {photon_energy_kev}")
    r = np.asarray(positions_m, dtype=np.float64) * 1e3  # mm
    r = r.copy()
    r[..., 2] += distance_mm
    k = 2 * np.pi * photon_energy_kev / HC_KEV_NM
    u = r / np.linalg.norm(r, axis=-1, keepdims=True)
    u[..., 2] -= 1.0
    return k * u


def agipd_q(geom, distance_mm: float, photon_energy_kev: float) -> np.ndarray:
    """Flattened (P, 3) q-vectors (rad/nm) for the unassembled AGIPD 1M layout."""
    pos = geom.get_pixel_positions()  # (16, 512, 128, 3) metres, pixel centres
    if pos.shape[:3] != AGIPD_SHAPE:
        raise InputError("data.geometry", None, f"expected AGIPD 1M {AGIPD_SHAPE}, got {pos.shape[:3]}")
    return pixel_q(pos, distance_mm, photon_energy_kev).reshape(-1, 3)


def static_mask(edge_px: int = 1) -> np.ndarray:
    """Static AGIPD 1M good-pixel mask, (16, 512, 128) bool, True = good.

    Masks ``edge_px`` pixels at module edges and at the borders of the 64 x 64
    pixel ASICs (the wider pixels next to the ASIC gaps).
    """
    good = np.ones(AGIPD_SHAPE, dtype=bool)
    if edge_px > 0:
        ss = np.arange(AGIPD_SHAPE[1]) % 64
        fs = np.arange(AGIPD_SHAPE[2]) % 64
        good[:, (ss < edge_px) | (ss >= 64 - edge_px), :] = False
        good[:, :, (fs < edge_px) | (fs >= 64 - edge_px)] = False
    return good


def iter_run_photons(run_dir, photon_energy_kev: float, threshold: float = 0.5,
                     adu_per_photon: float | None = None, trains_per_chunk: int = 4,
                     train_slice: slice | None = None, good=None):
    """Stream a corrected (proc) AGIPD 1M run as photon-sparse chunks.

    Reads ``trains_per_chunk`` trains at a time (memory per chunk:
    16 x 512 x 128 x 4 B x frames-in-chunk, x2 for the mask), converts to
    photons (:func:`spicompute.ingest.hitfinding.to_photons`, keV unless
    ``adu_per_photon`` is given) and masks pixels flagged in the proc
    ``image.mask`` (non-zero = bad) or False in ``good`` ((16, 512, 128) bool).

    Yields (train_id (n,) uint64, pulse_id (n,) uint64, counts csr (n, P) int32).
    """
    import scipy.sparse as sp
    from extra_data import RunDirectory
    from extra_data.components import AGIPD1M

    from spicompute.ingest.hitfinding import to_photons

    try:
        run = RunDirectory(str(run_dir))
        if train_slice is not None:
            run = run.select_trains(train_slice)
        det = AGIPD1M(run)
    except Exception as exc:
        raise InputError(run_dir, "data.input", f"not a readable AGIPD 1M run ({exc})") from exc
    unit = adu_per_photon if adu_per_photon else photon_energy_kev
    P = int(np.prod(AGIPD_SHAPE))
    for part in det.split_trains(trains_per_part=trains_per_chunk):
        data = part.get_array("image.data")  # (module, train, pulse, ss, fs)
        ok = part.get_array("image.mask").values == 0
        if good is not None:
            ok &= np.asarray(good, dtype=bool)[:, None, None]
        n = to_photons(data.values, unit, threshold, mask=ok)
        nt, npulse = n.shape[1], n.shape[2]
        n = np.moveaxis(n, 0, 2).reshape(nt * npulse, P)  # frames in (train, pulse) order
        tid = np.repeat(data.coords["train"].values.astype(np.uint64), npulse)
        pid = np.tile(data.coords["pulse"].values.astype(np.uint64), nt)
        yield tid, pid, sp.csr_matrix(n)
