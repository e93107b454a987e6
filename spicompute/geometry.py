"""Detector geometry: per-pixel q-vectors on the Ewald sphere.

Units: lengths in mm (detector) or nm (wavelength), ``q`` in rad/nm
(``|q| = 4 pi sin(theta) / lambda``), solid angles in sr.  The beam travels
along +z; pixel (row i, col j) of a regular detector sits at
``x = (j - cx) * pixel_x``, ``y = (i - cy) * pixel_y``, ``z = distance``,
and ``q = k (s - z_hat)`` with ``s`` the unit vector to the pixel and
``k = 2 pi / lambda``.  Hence ``q_z = -(k - sqrt(k^2 - q_perp^2)) <= 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spicompute.errors import ParameterError

PHOTON_ENERGY_WAVELENGTH_KEV_NM = 1.2398419843320026  # lambda[nm] * E[keV]


def wavelength_from_energy_kev(energy_kev: float) -> float:
    """Photon wavelength in nm for a photon energy in keV."""
    if not energy_kev > 0:
        raise ParameterError("photon_energy_kev", f"must be > 0, got {energy_kev!r}")
    return PHOTON_ENERGY_WAVELENGTH_KEV_NM / energy_kev


def wavenumber(wavelength_nm: float) -> float:
    """k = 2 pi / lambda in rad/nm."""
    return 2.0 * np.pi / wavelength_nm


def ewald_qz(qx: np.ndarray, qy: np.ndarray, wavelength_nm: float) -> np.ndarray:
    """q_z of the Ewald-sphere point above transverse (qx, qy), rad/nm.

    Returns NaN where ``qx^2 + qy^2 > k^2`` (no such scattering direction).
    """
    k = wavenumber(wavelength_nm)
    q_perp2 = np.asarray(qx, dtype=np.float64) ** 2 + np.asarray(qy, dtype=np.float64) ** 2
    with np.errstate(invalid="ignore"):
        return -(k - np.sqrt(k * k - q_perp2))


def grid_q(size: int, dq_nm: float, wavelength_nm: float | None = None) -> np.ndarray:
    """q-vectors of a square 2D grid of ``size x size`` points, shape (size, size, 3).

    Point (i, j) has ``qx = (j - c) * dq``, ``qy = (i - c) * dq`` with
    ``c = size // 2``; ``qz`` is on the Ewald sphere if a wavelength is given,
    else 0 (the small-angle, flat limit).  This is the grid of 2D class
    averages.
    """
    c = size // 2
    axis = (np.arange(size) - c) * dq_nm
    qy, qx = np.meshgrid(axis, axis, indexing="ij")
    qz = np.zeros_like(qx) if wavelength_nm is None else ewald_qz(qx, qy, wavelength_nm)
    return np.stack([qx, qy, qz], axis=-1)


@dataclass
class Detector:
    """Pixel geometry of a detector, flat over ``P`` pixels.

    Attributes
    ----------
    q : (P, 3) float64
        Scattering vector of each pixel, rad/nm, lab frame.
    mask : (P,) bool
        True for pixels that may be used (not beamstop, gap or dead).
    solid_angle : (P,) float64
        Solid angle of each pixel, sr.
    polarization : (P,) float64
        Polarisation factor of each pixel (1 = none).
    wavelength_nm : float
    distance_mm : float
        Sample-detector distance (NaN when unknown, e.g. Dragonfly files).
    pixel_size_mm : float
        Pixel pitch after binning (NaN when unknown).
    shape : tuple (rows, cols) or None
        Set when the pixels form a regular image in row-major order.
    center : tuple (row, col) or None
        Beam position in pixels for a regular image.
    merge_only : (P,) bool or None
        Pixels outside ``mask`` whose photons 2D EMC merges into the models
        without fitting them (Dragonfly's detector ``mask == 1``); None: none.
    """

    q: np.ndarray
    mask: np.ndarray
    solid_angle: np.ndarray
    polarization: np.ndarray
    wavelength_nm: float
    distance_mm: float = float("nan")
    pixel_size_mm: float = float("nan")
    shape: tuple[int, int] | None = None
    center: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)
    merge_only: np.ndarray | None = None

    def __post_init__(self):
        self.q = np.asarray(self.q, dtype=np.float64)
        n = self.q.shape[0]
        self.mask = np.asarray(self.mask, dtype=bool).reshape(n)
        self.solid_angle = np.asarray(self.solid_angle, dtype=np.float64).reshape(n)
        self.polarization = np.asarray(self.polarization, dtype=np.float64).reshape(n)
        if self.shape is not None:
            self.shape = (int(self.shape[0]), int(self.shape[1]))
            if self.shape[0] * self.shape[1] != n:
                raise ValueError(f"detector shape {self.shape} does not hold {n} pixels")
        if self.center is not None:
            self.center = (float(self.center[0]), float(self.center[1]))
        if self.merge_only is not None:
            self.merge_only = np.asarray(self.merge_only, dtype=bool).reshape(n) & ~self.mask
            if not self.merge_only.any():
                self.merge_only = None

    @property
    def n_pixels(self) -> int:
        return int(self.q.shape[0])

    @property
    def q_norm(self) -> np.ndarray:
        """|q| per pixel, rad/nm, shape (P,)."""
        return np.linalg.norm(self.q, axis=1)

    @property
    def q_perp(self) -> np.ndarray:
        """Transverse (qx, qy) per pixel, rad/nm, shape (P, 2)."""
        return self.q[:, :2]

    @property
    def scattering_angle_deg(self) -> np.ndarray:
        """Full scattering angle 2 theta per pixel, degrees."""
        k = wavenumber(self.wavelength_nm)
        return np.degrees(2 * np.arcsin(np.clip(self.q_norm / (2 * k), 0, 1)))

    @property
    def dq_nm(self) -> float:
        """Typical q spacing of neighbouring pixels near the beam, rad/nm.

        For a regular detector this is ``k * pixel / distance``; otherwise the
        median nearest-neighbour distance of the 64 lowest-q pixels.
        """
        if np.isfinite(self.pixel_size_mm) and np.isfinite(self.distance_mm):
            return wavenumber(self.wavelength_nm) * self.pixel_size_mm / self.distance_mm
        order = np.argsort(self.q_norm)[:64]
        pts = self.q[order, :2]
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        d[d == 0] = np.inf
        return float(np.median(d.min(axis=1)))

    @property
    def q_max_nm(self) -> float:
        """Largest transverse |q| of an unmasked pixel, rad/nm."""
        good = self.mask if self.mask.any() else np.ones_like(self.mask)
        return float(np.linalg.norm(self.q_perp[good], axis=1).max())

    def correction(self) -> np.ndarray:
        """Relative pixel efficiency: solid angle x polarisation, max 1, (P,)."""
        corr = self.solid_angle * self.polarization
        top = corr.max()
        return corr / top if top > 0 else corr


def regular_detector(
    shape: tuple[int, int],
    wavelength_nm: float,
    distance_mm: float,
    pixel_size_mm: float,
    center: tuple[float, float] | None = None,
    binning: int = 1,
    polarization: str = "x",
    mask: np.ndarray | None = None,
) -> Detector:
    """Flat detector of ``shape`` pixels (after binning) perpendicular to the beam.

    Parameters
    ----------
    shape : (rows, cols) after binning.
    wavelength_nm, distance_mm, pixel_size_mm : physical geometry; the pixel
        size is the native pitch, multiplied by ``binning``.
    center : beam position (row, col) in binned pixels; default image centre.
    polarization : "x", "y" (linear along that axis) or "none" (unpolarised).
    mask : optional (rows, cols) bool of good pixels.
    """
    rows, cols = int(shape[0]), int(shape[1])
    for name, value in (("wavelength_nm", wavelength_nm), ("distance_mm", distance_mm),
                        ("pixel_size_mm", pixel_size_mm)):
        if not (np.isfinite(value) and value > 0):
            raise ParameterError(name, f"must be > 0, got {value!r}")
    if rows < 1 or cols < 1:
        raise ParameterError("detector shape", f"must be positive, got {shape!r}")
    if int(binning) < 1:
        raise ParameterError("binning", f"must be >= 1, got {binning!r}")
    pitch = pixel_size_mm * int(binning)
    if center is None:
        center = ((rows - 1) / 2.0, (cols - 1) / 2.0)
    cy, cx = center
    ii, jj = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64),
                         indexing="ij")
    x = (jj - cx) * pitch
    y = (ii - cy) * pitch
    z = np.full_like(x, distance_mm)
    r = np.sqrt(x * x + y * y + z * z)
    s = np.stack([x / r, y / r, z / r], axis=-1).reshape(-1, 3)
    k = wavenumber(wavelength_nm)
    q = k * (s - np.array([0.0, 0.0, 1.0]))
    solid = (pitch * pitch * distance_mm / r**3).reshape(-1)
    if polarization == "x":
        pol = 1.0 - s[:, 0] ** 2
    elif polarization == "y":
        pol = 1.0 - s[:, 1] ** 2
    elif polarization == "none":
        pol = 0.5 * (1.0 + s[:, 2] ** 2)
    else:
        raise ParameterError("polarization", f"must be 'x', 'y' or 'none', got {polarization!r}")
    good = np.ones(rows * cols, dtype=bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    return Detector(q=q, mask=good, solid_angle=solid, polarization=pol,
                    wavelength_nm=float(wavelength_nm), distance_mm=float(distance_mm),
                    pixel_size_mm=float(pitch), shape=(rows, cols), center=(cy, cx))


def standard_mask(
    shape: tuple[int, int],
    center: tuple[float, float],
    beamstop_radius_px: float = 0.0,
    gap_width_px: int = 0,
    gap_axis: str = "both",
    dead_fraction: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Good-pixel mask of a regular detector, (rows, cols) bool.

    Masks a circular beamstop, one horizontal and/or vertical panel gap
    through the beam (as between the AGIPD quadrants) and a random fraction
    of dead pixels.
    """
    rows, cols = shape
    cy, cx = center
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    good = np.ones(shape, dtype=bool)
    if beamstop_radius_px > 0:
        good &= (ii - cy) ** 2 + (jj - cx) ** 2 > beamstop_radius_px**2
    if gap_width_px > 0:
        half = gap_width_px / 2.0
        if gap_axis in ("both", "horizontal"):
            good &= np.abs(ii - cy) >= half
        if gap_axis in ("both", "vertical"):
            good &= np.abs(jj - cx) >= half
    if dead_fraction > 0:
        rng = rng or np.random.default_rng(0)
        good &= rng.random(shape) >= dead_fraction
    return good
