"""Simulated SPI data set: cubes melting into spheres, plus contaminants.

Physics, in order:

1. Shapes and their scattering amplitude F(q), evaluated *directly* at each
   frame's model-frame pixel coordinates ``s R^T q`` (no intensity volume is
   interpolated): closed forms for the cube, sphere, rod (box), dimer (two
   touching cubes: ``F_cube 2 cos(qx a / 2)``) and irregular aggregates
   (clusters of small spheres: sum of sphere amplitudes with phases).  The
   melt family is the superellipsoid ``|x|^p + |y|^p + |z|^p <= r^p`` with
   ``1/p = t/2`` (t = 0 cube, t = 1 sphere) and volume ``a^3 (1 + g t)``;
   its interior levels have no closed form, so their real amplitude is
   integrated semi-analytically on a fine positive-octant q-grid
   (:func:`spicompute.shapes.superellipsoid_amplitude_grid`; step
   ``pi / (melt_grid_oversample * D)``, i.e. an equivalent real-space box of
   ``2 * melt_grid_oversample`` times the largest extent D) and read
   trilinearly.  A frame at continuous t takes the *amplitude* interpolated
   between the two nearest levels (these shapes are centrosymmetric, so F is
   real): a coherent shape sequence whose zeros move continuously, not an
   incoherent mixture of intensities.  The ends are the closed forms.
2. Each frame: a shape (class mixture), a melt parameter t, a size factor s
   (``s^6 I(s q)``), a uniformly random orientation R, a fluence from a
   Gaussian beam profile (particle position uniform over the beam disc ->
   relative fluence log-uniform in [fluence_min, 1]).
3. Expected counts ``lambda = c * fluence * I(s R^T q) * solid_angle * polarisation``
   on the curved Ewald sphere, c chosen so the data set's mean *particle*
   photons per frame equals ``photons_mean``; plus an optional background of
   ``background_photons`` mean photons per frame (see
   :func:`background_profile`), independent of the particle's fluence;
   both Poisson sampled; masked pixels are zero.

The truth (class, t, quaternion, fluence, size, background count) and
intensity volumes of every shape (on a grid whose real-space box is at least
twice the largest particle) go to a separate file; no downstream stage reads
it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from spicompute.errors import ParameterError
from spicompute.geometry import Detector, regular_detector, standard_mask, wavelength_from_energy_kev
from spicompute.io.frames import FrameSet
from spicompute.orient.quaternions import random_quaternions, rotation_matrices
from spicompute.params import in_range, integer, positive, with_defaults
from spicompute.shapes import (
    box_amplitude_torch,
    melt_half_size,
    sphere_amplitude_torch,
    sphere_form_torch,
    superellipsoid_amplitude_grid,
    superellipsoid_diameter,
    superellipsoid_exponent,
)

MAX_FRAMES = 50_000_000        # simulate.n_frames sanity bound (the paper's run: 2.45 M)
MAX_DETECTOR_SIZE = 4096       # simulate.detector_size sanity bound (pixels per side after binning)

log = logging.getLogger("spicompute.simulate")

CLASSES = ("cube", "melt", "sphere", "dimer", "rod", "aggregate")
_MEMORY_BUDGET_BYTES = 2 * 1024**3  # keep expected patterns between passes below this
_POINTS_PER_CHUNK = 1 << 23          # frames x pixels evaluated at once (bounds memory)
MELT_CELLS = 192                     # x-y quadrature cells per half-size (rms error ~3e-4)
AGGREGATE_EXTENT_NM = 1.6            # aggregates fit in a sphere of this many cube edges


@dataclass
class SimulationParams:
    """Validated ``simulate`` section (see params.yaml for meaning and units)."""

    seed: int = 0
    n_frames: int = 4000
    photon_energy_kev: float = 6.0
    distance_mm: float = 705.0
    pixel_size_mm: float = 0.2
    binning: int = 2
    detector_size: int = 129
    beam_center_px: list | None = None
    beamstop_radius_px: float = 3.0
    gap_width_px: int = 2
    dead_fraction: float = 0.002
    polarization: str = "x"
    photons_mean: float = 1500.0
    fluence_min: float = 0.3
    fluence_tail_fraction: float = 0.0
    fluence_tail_decades: float = 1.0
    background_photons: float = 0.0
    background_flat_fraction: float = 0.5
    background_q_nm: float = 0.3
    volume_size: int = 128
    melt_grid_oversample: float = 4.0
    cube_edge_nm: float = 42.0
    size_jitter: float = 0.03
    melt_volume_growth: float = 0.10
    melt_levels: int = 9
    melt_beta_shape: float = 1.0
    rod_length_nm: float = 110.0
    rod_width_nm: float = 20.0
    aggregate_shapes: int = 3
    fractions: dict = field(default_factory=lambda: {"cube": 0.25, "melt": 0.45, "sphere": 0.15,
                                                     "dimer": 0.05, "rod": 0.04,
                                                     "aggregate": 0.06})
    chunk_frames: int = 512

    @classmethod
    def from_dict(cls, raw: dict) -> "SimulationParams":
        p = cls(**with_defaults("simulate", raw, cls().__dict__))
        p.seed = integer("simulate.seed", p.seed, minimum=0)
        # sanity bounds: beyond them a typo (1e12) would try to allocate terabytes before failing
        p.n_frames = integer("simulate.n_frames", p.n_frames, minimum=1, maximum=MAX_FRAMES)
        p.photon_energy_kev = positive("simulate.photon_energy_kev", p.photon_energy_kev)
        p.distance_mm = positive("simulate.distance_mm", p.distance_mm)
        p.pixel_size_mm = positive("simulate.pixel_size_mm", p.pixel_size_mm)
        p.binning = positive("simulate.binning", p.binning, integer=True)
        p.detector_size = integer("simulate.detector_size", p.detector_size, maximum=MAX_DETECTOR_SIZE)
        if p.detector_size < 8:
            raise ParameterError("simulate.detector_size", f"must be >= 8, got {p.detector_size}")
        if p.beam_center_px is not None:
            bc = p.beam_center_px
            if not isinstance(bc, (list, tuple)) or len(bc) != 2:
                raise ParameterError("simulate.beam_center_px",
                                     f"must be null or [row, col], got {bc!r}")
            p.beam_center_px = [in_range(f"simulate.beam_center_px[{i}]", v, 0.0,
                                         p.detector_size - 1.0) for i, v in enumerate(bc)]
        p.beamstop_radius_px = positive("simulate.beamstop_radius_px", p.beamstop_radius_px,
                                        allow_zero=True)
        p.gap_width_px = positive("simulate.gap_width_px", p.gap_width_px, integer=True,
                                  allow_zero=True)
        p.dead_fraction = in_range("simulate.dead_fraction", p.dead_fraction, 0.0, 1.0,
                                   high_open=True)
        p.photons_mean = positive("simulate.photons_mean", p.photons_mean)
        p.fluence_min = in_range("simulate.fluence_min", p.fluence_min, 0.0, 1.0, low_open=True)
        p.fluence_tail_fraction = in_range("simulate.fluence_tail_fraction", p.fluence_tail_fraction, 0.0, 1.0)
        p.fluence_tail_decades = in_range("simulate.fluence_tail_decades", p.fluence_tail_decades, 0.0, 3.0,
                                          low_open=True)
        p.background_photons = positive("simulate.background_photons", p.background_photons,
                                        allow_zero=True)
        p.background_flat_fraction = in_range("simulate.background_flat_fraction",
                                              p.background_flat_fraction, 0.0, 1.0)
        p.background_q_nm = positive("simulate.background_q_nm", p.background_q_nm)
        p.volume_size = positive("simulate.volume_size", p.volume_size, integer=True)
        if p.volume_size < 16:
            raise ParameterError("simulate.volume_size", f"must be >= 16, got {p.volume_size}")
        p.melt_grid_oversample = in_range("simulate.melt_grid_oversample",
                                          p.melt_grid_oversample, 1.0, 16.0)
        p.cube_edge_nm = positive("simulate.cube_edge_nm", p.cube_edge_nm)
        p.size_jitter = in_range("simulate.size_jitter", p.size_jitter, 0.0, 0.2)
        p.melt_volume_growth = in_range("simulate.melt_volume_growth", p.melt_volume_growth,
                                        -0.5, 2.0)
        p.melt_levels = positive("simulate.melt_levels", p.melt_levels, integer=True)
        if p.melt_levels < 2:
            raise ParameterError("simulate.melt_levels", f"must be >= 2, got {p.melt_levels}")
        p.melt_beta_shape = in_range("simulate.melt_beta_shape", p.melt_beta_shape, 0.05, 20.0)
        p.rod_length_nm = positive("simulate.rod_length_nm", p.rod_length_nm)
        p.rod_width_nm = positive("simulate.rod_width_nm", p.rod_width_nm)
        p.aggregate_shapes = positive("simulate.aggregate_shapes", p.aggregate_shapes,
                                      integer=True)
        p.chunk_frames = positive("simulate.chunk_frames", p.chunk_frames, integer=True)
        if not isinstance(p.fractions, dict) or not p.fractions:
            raise ParameterError("simulate.fractions", "must map class names to weights")
        for name, value in p.fractions.items():
            if name not in CLASSES:
                raise ParameterError(f"simulate.fractions.{name}",
                                     f"unknown class (known: {', '.join(CLASSES)})")
            positive(f"simulate.fractions.{name}", value, allow_zero=True)
        if sum(float(v) for v in p.fractions.values()) <= 0:
            raise ParameterError("simulate.fractions", "weights sum to zero")
        if p.polarization not in ("x", "y", "none"):
            raise ParameterError("simulate.polarization",
                                 f"must be 'x', 'y' or 'none', got {p.polarization!r}")
        return p

    @property
    def wavelength_nm(self) -> float:
        return wavelength_from_energy_kev(self.photon_energy_kev)

    @property
    def size_scale_range(self) -> tuple[float, float]:
        """Size factors are clipped to 1 -+ 4 size_jitter (never beyond [0.8, 1.2])."""
        return max(0.8, 1.0 - 4.0 * self.size_jitter), min(1.2, 1.0 + 4.0 * self.size_jitter)


@dataclass
class Truth:
    """Per-frame ground truth of a simulation (all arrays (N,) unless noted)."""

    frame_id: np.ndarray
    class_name: np.ndarray          # str
    melt_t: np.ndarray              # 0 cube ... 1 sphere; NaN for contaminants
    quaternion: np.ndarray          # (N, 4) scalar first, model -> lab
    fluence: np.ndarray             # relative, in [fluence_min, 1]
    size_scale: np.ndarray          # s
    size_nm: np.ndarray             # edge of the cube of equal volume
    photons_expected: np.ndarray    # expected particle photons (background excluded)
    background_photons: np.ndarray  # sampled background photons of each frame (int)
    volumes: np.ndarray             # (V, L, L, L) float32
    volume_names: list
    volume_t: np.ndarray            # (V,) melt t of each volume, NaN otherwise
    volume_dq_nm: float


def build_detector(p: SimulationParams, rng: np.random.Generator) -> Detector:
    """Regular AGIPD-like detector with beamstop, panel gap and dead pixels.

    The beam sits at ``beam_center_px`` (row, col) or, when null, at the image
    centre; the beamstop and the cross-shaped panel gap follow the beam.
    """
    shape = (p.detector_size, p.detector_size)
    if p.beam_center_px is None:
        center = ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
    else:
        center = (float(p.beam_center_px[0]), float(p.beam_center_px[1]))
    mask = standard_mask(shape, center, p.beamstop_radius_px, p.gap_width_px, "both",
                         p.dead_fraction, rng)
    return regular_detector(shape, p.wavelength_nm, p.distance_mm, p.pixel_size_mm, center,
                            p.binning, p.polarization, mask)


def background_profile(detector: Detector, flat_fraction: float, q_decay_nm: float) -> np.ndarray:
    """Expected share of the background photons in each pixel, (P,) summing to 1.

    Two terms, each seen through the pixel efficiency (solid angle x
    polarisation, :meth:`Detector.correction`) and zero on masked pixels:
    a flat term (``flat_fraction`` of the photons; constant per unit solid
    angle, like stray light and detector noise above threshold) and a
    radially decaying gas/solvent term ``exp(-|q| / q_decay_nm)`` (the rest).
    """
    eff = detector.correction() * detector.mask
    if eff.sum() <= 0:
        raise ParameterError("simulate", "the detector has no good pixels")
    return background_shares(eff, detector.q_norm, flat_fraction, q_decay_nm)


def background_shares(efficiency: np.ndarray, q_norm: np.ndarray, flat_fraction: float,
                      q_decay_nm: float) -> np.ndarray:
    """The two-term background profile of :func:`background_profile` on any points:
    efficiency (P,) (0 where not observed, sum > 0), |q| (P,) rad/nm -> shares (P,) summing to 1."""
    decay = efficiency * np.exp(-q_norm / q_decay_nm)
    return flat_fraction * efficiency / efficiency.sum() + (1.0 - flat_fraction) * decay / decay.sum()


def aggregate_geometry(cube_edge_nm: float, rng: np.random.Generator):
    """Radii (k,) and centres (k, 3), nm, of an irregular cluster of 3-6 spheres.

    Sphere radii 0.25-0.45 a (so the cluster scatters about as strongly as a
    cube), centres random, centred on their mean and pulled within 0.5 a of it.
    """
    n = int(rng.integers(3, 7))
    radii = rng.uniform(0.25, 0.45, n) * cube_edge_nm
    centres = rng.normal(0.0, 0.3, (n, 3)) * cube_edge_nm
    centres -= centres.mean(axis=0)
    scale = 0.5 * cube_edge_nm / max(np.linalg.norm(centres, axis=1).max(), 1e-9)
    centres *= min(1.0, scale)
    return radii, centres


def aggregate_intensity(q: np.ndarray, cube_edge_nm: float, rng: np.random.Generator):
    """|F|^2 of an irregular cluster of 3-6 spheres (an "assorted" contaminant).

    ``F = sum_j V_j f(|q| r_j) exp(-i q . x_j)`` with the geometry of
    :func:`aggregate_geometry`.  q : (..., 3) rad/nm -> (...) nm^6.
    """
    radii, centres = aggregate_geometry(cube_edge_nm, rng)
    q = torch.as_tensor(np.asarray(q, dtype=np.float64))
    return _aggregate_intensity(q, radii, centres).numpy()


# --- amplitudes evaluated at model-frame points (torch, batched) -----------------------------

def _aggregate_intensity(q: torch.Tensor, radii, centres) -> torch.Tensor:
    """|sum_j V_j f(|q| r_j) exp(-i q . x_j)|^2 at q (..., 3), in q's dtype."""
    qn = torch.linalg.vector_norm(q, dim=-1)
    re = torch.zeros(q.shape[:-1], dtype=q.dtype)
    im = torch.zeros_like(re)
    phases = q @ torch.as_tensor(np.asarray(centres).T, dtype=q.dtype)  # (..., k)
    for j, r in enumerate(radii):  # 3-6 spheres, each a whole-array expression
        amp = sphere_form_torch(qn * float(r)) * float(4.0 / 3.0 * np.pi * r**3)
        re += amp * torch.cos(phases[..., j])
        im -= amp * torch.sin(phases[..., j])
    return re * re + im * im


class ShapeLibrary:
    """All shapes of a simulation, evaluated at arbitrary model-frame q.

    Built once per data set: melt levels ``t_l = linspace(0, 1, melt_levels)``
    (level 0 the closed-form cube, the last the closed-form sphere, interior
    levels octant amplitude grids covering ``|q_i| <= q_extent_nm``), the rod,
    the dimer and ``aggregate_shapes`` aggregates.
    """

    def __init__(self, p: SimulationParams, q_extent_nm: float):
        a = p.cube_edge_nm
        self.edge_nm = a
        self.melt_t = np.linspace(0.0, 1.0, p.melt_levels)
        self.melt_half = np.array([melt_half_size(t, a, p.melt_volume_growth)
                                   for t in self.melt_t])
        self.melt_p = np.array([superellipsoid_exponent(t) for t in self.melt_t])
        self.melt_diameter = np.array([superellipsoid_diameter(h, e)
                                       for h, e in zip(self.melt_half, self.melt_p)])
        self.rod_half = (p.rod_width_nm / 2, p.rod_width_nm / 2, p.rod_length_nm / 2)
        agg_rng = np.random.default_rng(np.random.SeedSequence([p.seed, 7]))
        self.aggregates = [aggregate_geometry(a, agg_rng) for _ in range(p.aggregate_shapes)]
        # interior melt levels: octant amplitude grids, real-space box >= 2 x their extent
        interior = range(1, p.melt_levels - 1)
        largest = max((self.melt_diameter[i] for i in interior), default=0.0)
        self.melt_dq_nm = np.pi / (p.melt_grid_oversample * max(largest, 1e-9))
        self.melt_box_nm = 2 * np.pi / self.melt_dq_nm
        assert len(interior) == 0 or self.melt_box_nm >= 2 * largest * (1 - 1e-9)
        n_q = int(np.ceil(q_extent_nm / self.melt_dq_nm)) + 2
        self._grids = {}
        for i in tqdm(interior, desc="melt amplitudes", leave=False, disable=None):
            grid = superellipsoid_amplitude_grid(n_q, self.melt_dq_nm, self.melt_half[i],
                                                 self.melt_p[i], MELT_CELLS)
            # stored (z, y, x) = grid_sample's (D, H, W), so points go in as (x, y, z)
            zyx = np.ascontiguousarray(grid.transpose(2, 1, 0))
            self._grids[i] = torch.from_numpy(zyx)[None, None]
        self.q_extent_nm = (n_q - 1) * self.melt_dq_nm

    def extents_nm(self) -> dict:
        """Largest extent (circumscribed diameter, nm) of each kind of shape (s = 1)."""
        a = self.edge_nm
        agg = [2 * float(np.max(np.linalg.norm(c, axis=1) + r)) for r, c in self.aggregates]
        return {"melt": float(self.melt_diameter.max()),
                "dimer": float(np.sqrt(6.0) * a),
                "rod": float(2 * np.linalg.norm(self.rod_half)),
                "aggregate": max(agg, default=0.0)}

    def level_amplitude(self, level: int, q: torch.Tensor) -> torch.Tensor:
        """Real amplitude (nm^3) of melt level ``level`` at q (..., 3) float32."""
        if level == 0:
            return box_amplitude_torch(q, (0.5 * self.edge_nm,) * 3)
        if level == len(self.melt_t) - 1:
            return sphere_amplitude_torch(q, float(self.melt_half[-1]))
        grid = self._grids[level]
        n = grid.shape[-1]
        pts = q.reshape(-1, 3).abs() * (2.0 / ((n - 1) * self.melt_dq_nm)) - 1.0
        out = torch.nn.functional.grid_sample(grid, pts.view(1, -1, 1, 1, 3),
                                              mode="bilinear", padding_mode="zeros",
                                              align_corners=True)
        return out.view(q.shape[:-1])

    def family_amplitude(self, q: torch.Tensor, t: np.ndarray) -> torch.Tensor:
        """Amplitude of the melt family at t (n,) for q (n, P, 3): linear in t between levels."""
        levels = len(self.melt_t)
        pos = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) * (levels - 1)
        lo = np.minimum(np.floor(pos).astype(int), levels - 2)
        frac = pos - lo
        out = torch.zeros(q.shape[:-1], dtype=q.dtype)
        for level in range(levels):  # a handful of levels, not a per-frame loop
            w = np.where(lo == level, 1.0 - frac, 0.0) + np.where(lo + 1 == level, frac, 0.0)
            sel = np.nonzero(w > 0)[0]
            if len(sel):
                idx = torch.from_numpy(sel)
                weight = torch.from_numpy(w[sel].astype(np.float32))[:, None]
                out[idx] += weight * self.level_amplitude(level, q[idx])
        return out

    def intensity(self, kind: str, q: torch.Tensor, t: np.ndarray | None = None,
                  variant: np.ndarray | None = None) -> torch.Tensor:
        """|F|^2 (nm^6) of a unit-scale shape of ``kind`` at q (n, P, 3) float32 -> (n, P).

        kind : cube | melt | sphere (melt parameter t (n,)), dimer, rod,
        aggregate (which aggregate: variant (n,) int).
        """
        a = self.edge_nm
        if kind in ("cube", "melt", "sphere"):
            amp = self.family_amplitude(q, t)
        elif kind == "dimer":  # two cubes touching along x: F_cube * 2 cos(qx a / 2)
            amp = box_amplitude_torch(q, (0.5 * a,) * 3) * (2.0 * torch.cos(q[..., 0] * (0.5 * a)))
        elif kind == "rod":
            amp = box_amplitude_torch(q, self.rod_half)
        elif kind == "aggregate":
            out = torch.zeros(q.shape[:-1], dtype=q.dtype)
            for v, (radii, centres) in enumerate(self.aggregates):
                sel = np.nonzero(np.asarray(variant) == v)[0]
                if len(sel):
                    idx = torch.from_numpy(sel)
                    out[idx] = _aggregate_intensity(q[idx], radii, centres)
            return out
        else:
            raise ValueError(f"unknown shape kind {kind!r}")
        return amp * amp


def model_q(q_lab: torch.Tensor, quaternions: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    """Model-frame points ``s R^T q`` (n, P, 3) float32 of lab q (P, 3) for each frame."""
    mats = torch.from_numpy(rotation_matrices(quaternions).astype(np.float32))
    mats *= torch.from_numpy(np.asarray(scale, dtype=np.float32))[:, None, None]
    return torch.matmul(q_lab, mats)  # row vectors: q @ R = (R^T q)^T


def expected_patterns(library: ShapeLibrary, q_lab: np.ndarray, frames: dict,
                      pixel_factor: np.ndarray | None = None) -> np.ndarray:
    """Noise-free patterns ``s^6 I(s R^T q) * pixel_factor`` (n, P) float32, fluence 1.

    frames : dict of (n,) arrays class_name, melt_t, quaternion (n, 4),
    size_scale, variant (see :func:`draw_frame_parameters`).
    """
    q = torch.from_numpy(np.ascontiguousarray(q_lab, dtype=np.float32))
    scale = np.asarray(frames["size_scale"], dtype=np.float64)
    names = np.asarray(frames["class_name"])
    out = torch.zeros((len(names), q.shape[0]), dtype=torch.float32)
    with torch.no_grad():
        qm = model_q(q, frames["quaternion"], scale)
        family = np.nonzero(np.isin(names, ("cube", "melt", "sphere")))[0]
        groups = [("melt", family)] + [(k, np.nonzero(names == k)[0])
                                       for k in ("dimer", "rod", "aggregate")]
        for kind, sel in groups:
            if len(sel) == 0:
                continue
            idx = torch.from_numpy(sel)
            out[idx] = library.intensity(kind, qm[idx], t=frames["melt_t"][sel],
                                         variant=frames["variant"][sel])
        out *= torch.from_numpy((scale**6).astype(np.float32))[:, None]
        if pixel_factor is not None:
            out *= torch.from_numpy(np.asarray(pixel_factor, dtype=np.float32))[None, :]
    return out.numpy()


def _volume_grid(p: SimulationParams, detector: Detector, extents: dict) -> tuple[int, float]:
    """(L, dq) of the truth intensity grid: covers every pixel at the largest size
    factor, and its real-space box ``2 pi / dq`` is at least twice the largest
    particle (L is raised above ``volume_size`` when needed)."""
    q_extent = float(detector.q_norm.max()) * p.size_scale_range[1] * 1.02
    largest = max(extents.values())
    need = 2 * int(np.ceil(q_extent * largest / np.pi + 1.0))
    size = max(p.volume_size + p.volume_size % 2, need)
    dq = q_extent / (size // 2 - 1)
    assert 2 * np.pi / dq >= 2 * largest * (1 - 1e-9)
    return size, dq


def make_library(p: SimulationParams, detector: Detector) -> tuple[ShapeLibrary, int, float]:
    """(library, truth grid edge L, truth grid step dq) for a detector."""
    probe = ShapeLibrary(p, 0.0)  # extents only: 2-point grids, cheap
    size, dq = _volume_grid(p, detector, probe.extents_nm())
    half_extent = (size - 1 - size // 2) * dq  # per-axis coverage of the truth grid
    frames_extent = float(detector.q_norm.max()) * p.size_scale_range[1]
    return ShapeLibrary(p, max(half_extent, frames_extent) * 1.01), size, dq


def shape_volumes(p: SimulationParams, detector: Detector, library: ShapeLibrary | None = None):
    """Intensity volumes |F|^2 of all shapes the mixture needs, on one cubic q-grid.

    Returns (volumes (V, L, L, L) float32, names, melt t per volume, dq_nm);
    q = 0 at index L // 2, axes (x, y, z).  Melt levels are
    ``t = linspace(0, 1, melt_levels)``.  Values are the same amplitudes the
    frames use, evaluated at the grid points (for the truth file and tests).
    """
    if library is None:
        library, size, dq = make_library(p, detector)
    else:
        size, dq = _volume_grid(p, detector, library.extents_nm())
    axis = (np.arange(size) - size // 2) * dq
    plane = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)

    def volume(kind, t=None, variant=None):
        out = np.empty((size, size, size), dtype=np.float32)
        step = max(1, (1 << 21) // len(plane))  # z planes per evaluation (bounds memory)
        with torch.no_grad():
            for k0 in range(0, size, step):
                qz = axis[k0:k0 + step]
                q = np.concatenate([np.tile(plane, (len(qz), 1)),
                                    np.repeat(qz, len(plane))[:, None]], 1)
                qt = torch.from_numpy(q.astype(np.float32))[None]
                vals = library.intensity(
                    kind, qt, t=None if t is None else np.array([t]),
                    variant=None if variant is None else np.array([0 if variant is None
                                                                   else variant]))
                out[:, :, k0:k0 + len(qz)] = vals.numpy().reshape(len(qz), size, size) \
                    .transpose(1, 2, 0)
        return out

    volumes, names, ts = [], [], []
    for t in library.melt_t:
        volumes.append(volume("melt", t=float(t)))
        names.append(f"melt_t{t:.3f}")
        ts.append(float(t))
    for kind in ("dimer", "rod"):
        if p.fractions.get(kind, 0) > 0:
            volumes.append(volume(kind))
            names.append(kind)
            ts.append(np.nan)
    if p.fractions.get("aggregate", 0) > 0:
        for i in range(p.aggregate_shapes):
            volumes.append(volume("aggregate", variant=i))
            names.append(f"aggregate_{i}")
            ts.append(np.nan)
    return np.stack(volumes), names, np.asarray(ts), dq


def draw_frame_parameters(p: SimulationParams, rng: np.random.Generator) -> dict:
    """Class, melt t, orientation, fluence and size factor of every frame."""
    names = [c for c in CLASSES if float(p.fractions.get(c, 0)) > 0]
    weights = np.array([float(p.fractions[c]) for c in names])
    cls = rng.choice(len(names), size=p.n_frames, p=weights / weights.sum())
    class_name = np.array(names, dtype=object)[cls]
    melt_t = np.full(p.n_frames, np.nan)
    melt_t[class_name == "cube"] = 0.0
    melt_t[class_name == "sphere"] = 1.0
    is_melt = class_name == "melt"
    a = p.melt_beta_shape  # Beta(a, a): 1 uniform, < 1 mostly near the cube and sphere ends
    melt_t[is_melt] = rng.uniform(0.0, 1.0, is_melt.sum()) if a == 1.0 else rng.beta(a, a, is_melt.sum())
    # Gaussian beam, particle uniform over the disc where fluence >= fluence_min:
    # r^2 uniform -> log(fluence) uniform.
    fluence = np.exp(rng.uniform(np.log(p.fluence_min), 0.0, p.n_frames))
    if p.fluence_tail_fraction > 0:
        # the beam's halo: a share of weak hits, log-uniform over fluence_tail_decades below fluence_min
        tail = rng.random(p.n_frames) < p.fluence_tail_fraction
        lo = np.log(p.fluence_min) - p.fluence_tail_decades * np.log(10.0)
        fluence[tail] = np.exp(rng.uniform(lo, np.log(p.fluence_min), tail.sum()))
    size_scale = np.clip(1.0 + p.size_jitter * rng.standard_normal(p.n_frames),
                         *p.size_scale_range)
    quats = random_quaternions(p.n_frames, rng)
    variant = rng.integers(0, p.aggregate_shapes, p.n_frames)  # which aggregate volume
    return dict(class_name=class_name, melt_t=melt_t, fluence=fluence, size_scale=size_scale,
                quaternion=quats, variant=variant)


def poisson_sparse(lam: np.ndarray, rng: np.random.Generator) -> sp.csr_matrix:
    """Poisson counts of expected photons ``lam`` (n, P) as a CSR matrix.

    Exact and O(photons) rather than O(pixels): a Poisson process is a
    Poisson total per frame with photons placed independently with
    probability proportional to ``lam`` (inverse CDF on the cumulative sum).
    """
    n, n_pix = lam.shape
    cumulative = np.cumsum(lam, axis=None, dtype=np.float64)  # flat, row-major
    row_end = cumulative[n_pix - 1::n_pix]
    row_start = np.concatenate([[0.0], row_end[:-1]])
    totals = row_end - row_start
    n_photons = rng.poisson(totals)
    frame_of = np.repeat(np.arange(n), n_photons)
    u = row_start[frame_of] + rng.random(len(frame_of)) * totals[frame_of]
    flat = np.searchsorted(cumulative, u, side="right")
    flat = np.minimum(flat, frame_of * n_pix + n_pix - 1)  # guard the last bin's rounding
    cells, counts = np.unique(flat, return_counts=True)
    rows = cells // n_pix
    indptr = np.searchsorted(rows, np.arange(n + 1))
    return sp.csr_matrix((counts.astype(np.int32), (cells % n_pix).astype(np.int32), indptr),
                         shape=(n, n_pix))


def background_sparse(n_frames: int, mean_photons: float, profile: np.ndarray,
                      rng: np.random.Generator) -> sp.csr_matrix:
    """Poisson background counts (n_frames, P) CSR: ``mean_photons * profile`` per pixel.

    A Poisson total per frame, photons placed independently with probability
    ``profile`` (P,) (sums to 1): exactly independent Poisson pixels.
    """
    n_pix = len(profile)
    totals = rng.poisson(mean_photons, n_frames) if mean_photons > 0 \
        else np.zeros(n_frames, dtype=np.int64)
    frame_of = np.repeat(np.arange(n_frames), totals)
    cumulative = np.cumsum(profile, dtype=np.float64)
    pix = np.searchsorted(cumulative, rng.random(len(frame_of)) * cumulative[-1], side="right")
    pix = np.minimum(pix, n_pix - 1)
    return sp.csr_matrix((np.ones(len(frame_of), np.int32), (frame_of, pix)),
                         shape=(n_frames, n_pix))  # duplicates are summed


def simulate(p: SimulationParams, progress: bool = True) -> tuple[FrameSet, Truth]:
    """Simulate ``p.n_frames`` frames; deterministic for ``p.seed``."""
    seeds = np.random.SeedSequence(p.seed)
    geo_seed, par_seed, noise_seed, bg_seed = seeds.spawn(4)
    detector = build_detector(p, np.random.default_rng(geo_seed))
    log.info("detector %s pixels, beam at %s, q_max %.3f rad/nm, %d good", detector.shape,
             detector.center, detector.q_max_nm, detector.mask.sum())
    library, _, _ = make_library(p, detector)
    log.info("melt family: %d levels, amplitude grid step %.4f rad/nm (box %.0f nm)",
             len(library.melt_t), library.melt_dq_nm, library.melt_box_nm)
    volumes, names, volume_t, dq = shape_volumes(p, detector, library)
    log.info("%d truth volumes of %d^3, dq %.4f rad/nm", len(volumes), volumes.shape[1], dq)
    frames = draw_frame_parameters(p, np.random.default_rng(par_seed))
    pixel_factor = (detector.correction() * detector.mask).astype(np.float32)
    q_lab = detector.q.astype(np.float32)
    n, n_pix = p.n_frames, detector.n_pixels
    per_chunk = max(1, min(p.chunk_frames, _POINTS_PER_CHUNK // n_pix))
    chunks = [slice(s, min(s + per_chunk, n)) for s in range(0, n, per_chunk)]

    def patterns(ch):
        sub = {k: v[ch] for k, v in frames.items()}
        return expected_patterns(library, q_lab, sub, pixel_factor) \
            * frames["fluence"][ch, None].astype(np.float32)

    keep = n * n_pix * 4 <= _MEMORY_BUDGET_BYTES
    kept, totals = [], np.empty(n)
    for ch in tqdm(chunks, desc="patterns", disable=not progress, leave=False):
        pat = patterns(ch)
        totals[ch] = pat.sum(axis=1, dtype=np.float64)
        if keep:
            kept.append(pat)
    if not np.all(totals > 0):
        raise ParameterError("simulate", "some frames have no signal; check the geometry")
    c = p.photons_mean / totals.mean()
    noise_rngs = [np.random.default_rng(s) for s in noise_seed.spawn(len(chunks))]
    blocks = []
    for i, ch in enumerate(tqdm(chunks, desc="photons", disable=not progress, leave=False)):
        lam = (kept[i] if keep else patterns(ch)) * np.float32(c)
        blocks.append(poisson_sparse(lam, noise_rngs[i]))
        if keep:
            kept[i] = None
    counts = sp.vstack(blocks, format="csr")
    profile = background_profile(detector, p.background_flat_fraction, p.background_q_nm)
    background = background_sparse(n, p.background_photons, profile,
                                   np.random.default_rng(bg_seed))
    if p.background_photons > 0:
        counts = (counts + background).tocsr()
        counts.sort_indices()
    frameset = FrameSet(counts=counts, frame_id=np.arange(n), detector=detector)
    size_nm = p.cube_edge_nm * frames["size_scale"] * np.where(
        np.isfinite(frames["melt_t"]),
        (1 + p.melt_volume_growth * np.nan_to_num(frames["melt_t"])) ** (1 / 3), 1.0)
    truth = Truth(frame_id=np.arange(n), class_name=frames["class_name"].astype(str),
                  melt_t=frames["melt_t"], quaternion=frames["quaternion"],
                  fluence=frames["fluence"], size_scale=frames["size_scale"], size_nm=size_nm,
                  photons_expected=totals * c,
                  background_photons=np.asarray(background.sum(axis=1)).ravel().astype(np.int64),
                  volumes=volumes, volume_names=names, volume_t=volume_t, volume_dq_nm=dq)
    return frameset, truth
