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


